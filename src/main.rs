//! Command line: parse and hand over to the library.

use std::time::Duration;

use clap::{Parser, Subcommand};
use hookline::auth::{KeySource, Scopes};
use hookline::config::{Config, ConfigArgs, LogFormat};

#[derive(Parser)]
#[command(
    name = "hookline",
    version,
    about = "Self-hosted webhook delivery with a GraphQL API"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Mint a JWT with the configured (or generated) HS256 key.
    Token {
        #[arg(long)]
        tenant: String,
        /// Space-separated: read write publish admin.
        #[arg(long, default_value = "read write publish")]
        scope: String,
        /// Subject (`sub` claim): who the token is for.
        #[arg(long, default_value = "cli")]
        sub: String,
        /// Lifetime, e.g. `3600s`, `12h`, `30d`.
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Print the GraphQL schema (SDL).
    PrintSchema,
    /// Check the database, migrations, clock and queue; exit 1 if anything fails.
    Doctor,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 3600s, 12h or 30d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The hot paths allocate small, short-lived buffers on several threads at once (GraphQL
/// documents, JSON, HTTP bodies); with glibc's allocator, 17 % of the server's CPU in the
/// `single` benchmark goes to them (BENCHMARKS.md, "mimalloc is the allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema => print!("{}", hookline::graphql::sdl()),
        Command::Doctor => {
            let db = hookline::db::connect(&cfg).await?;
            let checks = hookline::doctor::run(&db).await;
            for c in &checks {
                println!(
                    "{:<5} {:<11} {}",
                    format!("{:?}", c.level).to_uppercase(),
                    c.name,
                    c.detail
                );
            }
            if checks
                .iter()
                .any(|c| c.level == hookline::doctor::Level::Fail)
            {
                std::process::exit(1);
            }
        }
        Command::Migrate => {
            init_logging(&cfg);
            let db = hookline::db::connect(&cfg).await?;
            hookline::db::migrate(&db).await?;
            println!("database migrated");
        }
        Command::Token {
            tenant,
            scope,
            sub,
            ttl,
        } => {
            let scopes = Scopes::parse_strict(&scope).map_err(anyhow::Error::msg)?;
            let (keys, _) = hookline::auth::JwtKeys::from_config(
                cfg.jwt_secret.as_deref(),
                cfg.jwt_public_key.as_deref(),
                &cfg.data_dir,
            )
            .map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                keys.mint(&tenant, &sub, scopes, ttl)
                    .map_err(anyhow::Error::msg)?
            );
        }
        Command::Serve => {
            init_logging(&cfg);
            let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
            let addr = listener.local_addr()?;
            let (state, started) = hookline::server::prepare(cfg).await?;
            println!(
                "Hookline {} listening on http://{addr}",
                env!("CARGO_PKG_VERSION")
            );
            println!("GraphiQL:  http://{addr}/graphql");
            println!("Dashboard: http://{addr}/");
            match &started.key_source {
                KeySource::Generated(p) | KeySource::Stored(p) => {
                    let token = started
                        .keys
                        .mint(
                            "dev",
                            "dev",
                            Scopes::parse("admin"),
                            Duration::from_secs(30 * 86400),
                        )
                        .map_err(anyhow::Error::msg)?;
                    println!(
                        "JWT key:   {} (generated on first start; set HOOKLINE_JWT_SECRET in production)",
                        p.display()
                    );
                    println!(
                        "Dev token (tenant \"dev\", scope admin, 30 days) — paste into GraphiQL headers as"
                    );
                    println!("  {{\"Authorization\": \"Bearer {token}\"}}");
                }
                _ => println!(
                    "Mint tokens with: hookline token --tenant T --scope \"read write publish\""
                ),
            }
            hookline::server::serve(state, listener, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight work");
}
