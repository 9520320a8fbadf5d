//! One error type with two faces: client-safe variants carry a code and a message; internal
//! ones are logged with their detail and reach the client only as `INTERNAL`.

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, SqlErr};

use crate::service::validate::FieldError;

/// Deliberately not `Display`/`std::error::Error`: async-graphql converts any `Display` type
/// into a bare error without our code, so this type gets its own conversion instead.
#[derive(Debug)]
pub enum AppError {
    Unauthenticated(String),
    Forbidden(String),
    NotFound(&'static str),
    BadInput {
        field: String,
        message: String,
    },
    Conflict(String),
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    Unavailable(String),
    /// Detail for the logs only.
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadInput { .. } => "BAD_USER_INPUT",
            AppError::Conflict(_) => "CONFLICT",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::Unavailable(_) => "UNAVAILABLE",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        AppError::Internal(format!("{context}: {err}"))
    }

    /// The message a client may see. Internal detail stays in the logs.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => "internal error".to_string(),
            AppError::BadInput { field, message } => format!("{field}: {message}"),
            AppError::Unauthenticated(m) | AppError::Forbidden(m) | AppError::Conflict(m) => {
                m.clone()
            }
            AppError::NotFound(what) => format!("{what} not found"),
            AppError::RateLimited { message, .. } => message.clone(),
            AppError::Unavailable(m) => format!("service unavailable: {m}"),
        }
    }

    /// Everything, internal detail included: for logs.
    pub fn detail(&self) -> String {
        match self {
            AppError::Internal(m) => format!("internal error: {m}"),
            other => other.public_message(),
        }
    }
}

impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        AppError::BadInput {
            field: e.field.to_string(),
            message: e.message,
        }
    }
}

impl From<DbErr> for AppError {
    fn from(e: DbErr) -> Self {
        // The one place where constraint violations become CONFLICT.
        if let Some(SqlErr::UniqueConstraintViolation(_)) = e.sql_err() {
            return AppError::Conflict("an object with the same unique key already exists".into());
        }
        match &e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                AppError::Unavailable("database unreachable".into())
            }
            _ => AppError::Internal(format!("database: {e}")),
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        if matches!(e, AppError::Internal(_) | AppError::Unavailable(_)) {
            tracing::error!(error = %e.detail(), "request failed");
        }
        e.into_graphql()
    }
}

impl AppError {
    /// The GraphQL error, without the server-side log line `From` writes for failures of the
    /// server (for conditions that are the client's, such as a subscriber falling behind).
    pub fn into_graphql(self) -> async_graphql::Error {
        let e = self;
        let mut err = async_graphql::Error::new(e.public_message());
        err = err.extend_with(|_, ext| {
            ext.set("code", e.code());
            match &e {
                AppError::BadInput { field, .. } => ext.set("field", field.as_str()),
                AppError::RateLimited {
                    retry_after_secs, ..
                } => ext.set("retryAfterSeconds", *retry_after_secs),
                _ => {}
            }
        });
        err
    }
}
