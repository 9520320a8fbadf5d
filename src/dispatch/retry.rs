//! Retry timing: the backoff schedule with jitter, and Retry-After header parsing.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;

pub const DEFAULT_SCHEDULE: &[u32] = &[5, 30, 120, 600, 1800, 3600, 10800, 21600];
pub const DEFAULT_MAX_ATTEMPTS: u32 = 9; // first try + 8 retries
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// Fraction of a delay that full jitter (±1.0) adds or removes.
const JITTER_SPAN: f64 = 0.2;

/// Delay before the next attempt after `attempts_made` attempts (>=1) have failed, or None
/// when no retry remains.
///
/// Schedule index = attempts_made-1; the last entry repeats when max_attempts allows more
/// attempts than entries. None when attempts_made >= max_attempts or the schedule is empty
/// (an empty schedule means "never retry" rather than a hot retry loop). `jitter` in
/// [-1.0, 1.0] scales ±20 %; out-of-range values are clamped and NaN counts as 0. Zero-second
/// entries stay zero. The result is rounded to whole milliseconds.
pub fn next_delay(
    schedule: &[u32],
    max_attempts: u32,
    attempts_made: u32,
    jitter: f64,
) -> Option<Duration> {
    if attempts_made >= max_attempts {
        return None;
    }
    let last = schedule.len().checked_sub(1)?;
    let index = usize::try_from(attempts_made.saturating_sub(1))
        .unwrap_or(usize::MAX)
        .min(last);
    let base_secs = f64::from(*schedule.get(index)?);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    let millis = (base_secs * 1000.0 * (1.0 + JITTER_SPAN * jitter)).round();
    // Non-negative and far below u64::MAX (u32 seconds * 1.2 * 1000), so the cast is exact.
    Some(Duration::from_millis(millis.max(0.0) as u64))
}

/// Uniform jitter in [-1.0, 1.0] for [`next_delay`]; spreads retries of many deliveries
/// that failed together so they do not hit the receiver in lockstep.
pub fn random_jitter() -> f64 {
    rand::rng().random_range(-1.0..=1.0)
}

/// Parse a Retry-After header value: delta-seconds or an HTTP-date relative to `now`; capped
/// at RETRY_AFTER_CAP; None when unparseable or in the past.
///
/// IMF-fixdate is the format servers must send; the obsolete RFC 850 and asctime forms are
/// accepted as RFC 7231 §7.1.1.1 asks of recipients.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64 is still "a very long time": cap it, don't drop it.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    let at = parse_http_date(value)?;
    let delta = at.signed_duration_since(now).to_std().ok()?;
    Some(delta.min(RETRY_AFTER_CAP))
}

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        "%a, %d %b %Y %H:%M:%S GMT", // IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT", // RFC 850
        "%a %b %e %H:%M:%S %Y",      // asctime
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
        .map(|naive| naive.and_utc())
        // Some servers send "+0000" instead of "GMT"; RFC 2822 parsing covers that.
        .or_else(|| {
            DateTime::parse_from_rfc2822(value)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn s(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    /// (schedule, max_attempts, attempts_made, jitter, expected)
    type DelayCase = (&'static [u32], u32, u32, f64, Option<Duration>);

    #[test]
    fn next_delay_table() {
        let d = DEFAULT_SCHEDULE;
        let m = DEFAULT_MAX_ATTEMPTS;
        let cases: &[DelayCase] = &[
            // Default schedule, no jitter: every retry slot in order.
            (d, m, 1, 0.0, s(5)),
            (d, m, 2, 0.0, s(30)),
            (d, m, 3, 0.0, s(120)),
            (d, m, 4, 0.0, s(600)),
            (d, m, 5, 0.0, s(1800)),
            (d, m, 6, 0.0, s(3600)),
            (d, m, 7, 0.0, s(10800)),
            (d, m, 8, 0.0, s(21600)),
            // 9 attempts made = first try + 8 retries: done.
            (d, m, 9, 0.0, None),
            (d, m, 10, 0.0, None),
            (d, m, u32::MAX, 0.0, None),
            // Jitter scales ±20 %.
            (d, m, 1, 1.0, ms(6000)),
            (d, m, 1, -1.0, ms(4000)),
            (d, m, 1, 0.5, ms(5500)),
            (d, m, 2, -0.25, ms(28500)),
            // Out-of-range and NaN jitter are tamed.
            (d, m, 1, 7.0, ms(6000)),
            (d, m, 1, -7.0, ms(4000)),
            (d, m, 1, f64::NAN, s(5)),
            (d, m, 1, f64::INFINITY, ms(6000)),
            // Last entry repeats when more attempts are allowed than entries.
            (&[1, 2], 5, 2, 0.0, s(2)),
            (&[1, 2], 5, 3, 0.0, s(2)),
            (&[1, 2], 5, 4, 0.0, s(2)),
            (&[1, 2], 5, 5, 0.0, None),
            (d, 100, 50, 0.0, s(21600)),
            // Zero-second entries stay zero whatever the jitter.
            (&[0, 10], 3, 1, 1.0, s(0)),
            (&[0, 10], 3, 1, -1.0, s(0)),
            (&[0, 10], 3, 2, 0.0, s(10)),
            // Degenerate inputs.
            (&[], 5, 1, 0.0, None),
            (d, 0, 1, 0.0, None),
            (d, 1, 1, 0.0, None),
            (d, m, 0, 0.0, s(5)),
            (&[u32::MAX], 3, 1, 1.0, ms(u64::from(u32::MAX) * 1200)),
        ];
        for (i, (schedule, max, made, jitter, want)) in cases.iter().enumerate() {
            assert_eq!(
                next_delay(schedule, *max, *made, *jitter),
                *want,
                "case {i}: schedule={schedule:?} max={max} made={made} jitter={jitter}"
            );
        }
    }

    #[test]
    fn random_jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn parse_retry_after_table() {
        // Sun, 06 Nov 1994 08:49:37 GMT, with sub-second noise to show it is handled.
        let now = Utc.with_ymd_and_hms(1994, 11, 6, 8, 49, 37).unwrap();
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", s(0)),
            ("120", s(120)),
            ("  120  ", s(120)),
            ("3600", s(3600)),
            ("3601", s(3600)),
            ("99999999999999999999999999", s(3600)),
            ("-5", None),
            ("+5", None),
            ("1.5", None),
            ("", None),
            ("   ", None),
            ("soon", None),
            ("120s", None),
            // IMF-fixdate, relative to `now`.
            ("Sun, 06 Nov 1994 08:49:37 GMT", s(0)),
            ("Sun, 06 Nov 1994 08:51:37 GMT", s(120)),
            ("Sun, 06 Nov 1994 10:49:37 GMT", s(3600)),
            ("Sun, 06 Nov 1994 08:49:36 GMT", None),
            ("Sat, 05 Nov 1994 08:49:37 GMT", None),
            // Obsolete forms recipients must accept.
            ("Sunday, 06-Nov-94 08:50:37 GMT", s(60)),
            ("Sun Nov  6 08:50:47 1994", s(70)),
            // Numeric zone instead of GMT.
            ("Sun, 06 Nov 1994 08:50:00 +0000", s(23)),
            ("Sun, 06 Nov 1994 09:50:00 +0100", s(23)),
            // Garbage dates.
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), *want, "{value:?}");
        }
    }

    #[test]
    fn parse_retry_after_with_subsecond_now() {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
            + chrono::Duration::milliseconds(250);
        let cases: &[(&str, Option<Duration>)] = &[
            ("Wed, 01 May 2024 12:00:10 GMT", ms(9750)),
            ("Wed, 01 May 2024 12:00:00 GMT", None),
            ("10", s(10)),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), *want, "{value:?}");
        }
    }
}
