//! Destination health: a pure circuit-breaker state machine driven by delivery attempt results.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Active,
    AwaitingRetry,
    Failing,
    RetryLimitReached,
    Disabled,
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::AwaitingRetry => "AWAITING_RETRY",
            Self::Failing => "FAILING",
            Self::RetryLimitReached => "RETRY_LIMIT_REACHED",
            Self::Disabled => "DISABLED",
        }
    }

    /// Case-insensitive so hand-written config values are accepted too.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Active,
            Self::AwaitingRetry,
            Self::Failing,
            Self::RetryLimitReached,
            Self::Disabled,
        ]
        .into_iter()
        .find(|h| h.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Consecutive failures that open the circuit.
pub const OPEN_AFTER_FAILURES: u32 = 5;
/// Seconds between probes while the circuit is open (the last entry repeats).
pub const PROBE_SCHEDULE: &[u32] = &[5, 30, 120, 600, 1800, 3600];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    Failure {
        retry_scheduled: bool,
    },
    /// HTTP 410: the receiver says this endpoint is gone for good.
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub health: Health,
    pub consecutive_failures: u32,
    /// When Some, deliveries of this destination wait this long (circuit open: the time
    /// until the single probe).
    pub pause_for: Option<Duration>,
    /// True when the destination must be disabled now.
    pub disable: bool,
}

/// Pure transition after one attempt.
///
/// Success → Active, failures reset, no pause. Failure: failures+1; at OPEN_AFTER_FAILURES or
/// more → Failing with pause_for = PROBE_SCHEDULE[min(failures-OPEN_AFTER_FAILURES, len-1)];
/// else AwaitingRetry if a retry is scheduled, otherwise RetryLimitReached. Gone → Disabled
/// with disable = true (it still counts as a failure).
///
/// Disabled is sticky: an attempt that was already in flight when the destination got
/// disabled must not bring it back, so only the failure count moves; re-enabling is an
/// operator action.
pub fn after_attempt(
    current: Health,
    consecutive_failures: u32,
    result: AttemptResult,
) -> Transition {
    let failures = match result {
        AttemptResult::Success => 0,
        AttemptResult::Failure { .. } | AttemptResult::Gone => {
            consecutive_failures.saturating_add(1)
        }
    };
    if current == Health::Disabled {
        return Transition {
            health: Health::Disabled,
            consecutive_failures: failures,
            pause_for: None,
            disable: false,
        };
    }
    let (health, pause_for, disable) = match result {
        AttemptResult::Success => (Health::Active, None, false),
        AttemptResult::Gone => (Health::Disabled, None, true),
        AttemptResult::Failure { .. } if failures >= OPEN_AFTER_FAILURES => {
            (Health::Failing, Some(probe_delay(failures)), false)
        }
        AttemptResult::Failure {
            retry_scheduled: true,
        } => (Health::AwaitingRetry, None, false),
        AttemptResult::Failure {
            retry_scheduled: false,
        } => (Health::RetryLimitReached, None, false),
    };
    Transition {
        health,
        consecutive_failures: failures,
        pause_for,
        disable,
    }
}

fn probe_delay(failures: u32) -> Duration {
    let step = usize::try_from(failures.saturating_sub(OPEN_AFTER_FAILURES)).unwrap_or(usize::MAX);
    let secs = PROBE_SCHEDULE
        .get(step)
        .or(PROBE_SCHEDULE.last())
        .copied()
        .unwrap_or(0);
    Duration::from_secs(u64::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptResult::*;
    use Health::*;

    const RETRY: AttemptResult = Failure {
        retry_scheduled: true,
    };
    const NO_RETRY: AttemptResult = Failure {
        retry_scheduled: false,
    };

    fn t(health: Health, failures: u32, pause_secs: Option<u64>, disable: bool) -> Transition {
        Transition {
            health,
            consecutive_failures: failures,
            pause_for: pause_secs.map(Duration::from_secs),
            disable,
        }
    }

    #[test]
    fn health_strings_round_trip() {
        let cases = [
            (Active, "ACTIVE"),
            (AwaitingRetry, "AWAITING_RETRY"),
            (Failing, "FAILING"),
            (RetryLimitReached, "RETRY_LIMIT_REACHED"),
            (Disabled, "DISABLED"),
        ];
        for (h, s) in cases {
            assert_eq!(h.as_str(), s);
            assert_eq!(Health::parse(s), Some(h));
            assert_eq!(Health::parse(&s.to_lowercase()), Some(h));
        }
        for bad in ["", "OK", "RETRY LIMIT REACHED"] {
            assert_eq!(Health::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn after_attempt_table() {
        // (case, current health, failures so far, result, expected transition)
        #[rustfmt::skip]
        let cases: &[(&str, Health, u32, AttemptResult, Transition)] = &[
            ("success stays active",        Active,            0,        Success,  t(Active, 0, None, false)),
            ("success resets failures",     AwaitingRetry,     3,        Success,  t(Active, 0, None, false)),
            ("first failure with retry",    Active,            0,        RETRY,    t(AwaitingRetry, 1, None, false)),
            ("failure without retry",       Active,            0,        NO_RETRY, t(RetryLimitReached, 1, None, false)),
            ("fourth failure still closed", AwaitingRetry,     3,        RETRY,    t(AwaitingRetry, 4, None, false)),
            ("fifth failure opens",         AwaitingRetry,     4,        RETRY,    t(Failing, 5, Some(5), false)),
            ("opens even without retry",    RetryLimitReached, 4,        NO_RETRY, t(Failing, 5, Some(5), false)),
            ("failed probe grows interval", Failing,           5,        RETRY,    t(Failing, 6, Some(30), false)),
            ("third probe",                 Failing,           6,        NO_RETRY, t(Failing, 7, Some(120), false)),
            ("fourth probe",                Failing,           7,        RETRY,    t(Failing, 8, Some(600), false)),
            ("fifth probe",                 Failing,           8,        RETRY,    t(Failing, 9, Some(1800), false)),
            ("sixth probe",                 Failing,           9,        RETRY,    t(Failing, 10, Some(3600), false)),
            ("last interval repeats",       Failing,           10,       RETRY,    t(Failing, 11, Some(3600), false)),
            ("far past schedule",           Failing,           1000,     RETRY,    t(Failing, 1001, Some(3600), false)),
            ("counter saturates",           Failing,           u32::MAX, RETRY,    t(Failing, u32::MAX, Some(3600), false)),
            ("probe success closes",        Failing,           9,        Success,  t(Active, 0, None, false)),
            ("410 disables",                Active,            0,        Gone,     t(Disabled, 1, None, true)),
            ("410 while open disables",     Failing,           7,        Gone,     t(Disabled, 8, None, true)),
            ("disabled stays on success",   Disabled,          2,        Success,  t(Disabled, 0, None, false)),
            ("disabled stays on failure",   Disabled,          2,        RETRY,    t(Disabled, 3, None, false)),
            ("disabled stays on 410",       Disabled,          2,        Gone,     t(Disabled, 3, None, false)),
        ];
        for (name, current, failures, result, want) in cases {
            assert_eq!(after_attempt(*current, *failures, *result), *want, "{name}");
        }
    }

    #[test]
    fn failure_sequence_opens_then_recovers() {
        let mut health = Active;
        let mut failures = 0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let tr = after_attempt(health, failures, RETRY);
            (health, failures) = (tr.health, tr.consecutive_failures);
            pauses.push(tr.pause_for.map(|d| d.as_secs()));
        }
        assert_eq!(
            pauses,
            [
                None,
                None,
                None,
                None,
                Some(5),
                Some(30),
                Some(120),
                Some(600)
            ]
        );
        assert_eq!(health, Failing);
        let tr = after_attempt(health, failures, Success);
        assert_eq!(tr, t(Active, 0, None, false));
    }
}
