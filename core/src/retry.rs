//! Retry policy for async calls: which outcomes are retried, how often, and how long to wait.
//!
//! Read from the same annotations OpenFaaS's queue worker uses, so existing stack files work:
//! `com.openfaas.retry.attempts`, `com.openfaas.retry.codes`, `com.openfaas.retry.min_wait`,
//! `com.openfaas.retry.max_wait`.

use std::collections::BTreeMap;
use std::time::Duration;

pub const ATTEMPTS_ANNOTATION: &str = "com.openfaas.retry.attempts";
pub const CODES_ANNOTATION: &str = "com.openfaas.retry.codes";
pub const MIN_WAIT_ANNOTATION: &str = "com.openfaas.retry.min_wait";
pub const MAX_WAIT_ANNOTATION: &str = "com.openfaas.retry.max_wait";

/// Most attempts a function may ask for, so a typo cannot retry a call for ever.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest wait a `Retry-After` can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How a function's failed async calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Invocations in all, the first included.
    pub attempts: u32,
    /// Status codes that are retried (a transport failure always is).
    pub codes: Vec<u16>,
    pub min_wait: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            codes: vec![408, 429, 500, 502, 503, 504],
            min_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// Why a retry annotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key} {value:?} is invalid: {why}")]
pub struct InvalidRetryAnnotation {
    pub key: &'static str,
    pub value: String,
    pub why: &'static str,
}

impl RetryPolicy {
    /// The policy a function's annotations describe, defaults for what they leave out.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, InvalidRetryAnnotation> {
        let mut policy = Self::default();
        let Some(a) = annotations else {
            return Ok(policy);
        };
        let bad = |key, value: &String, why| InvalidRetryAnnotation {
            key,
            value: value.clone(),
            why,
        };
        if let Some(v) = a.get(ATTEMPTS_ANNOTATION) {
            policy.attempts = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
                .ok_or_else(|| bad(ATTEMPTS_ANNOTATION, v, "a whole number from 1 to 100"))?;
        }
        if let Some(v) = a.get(CODES_ANNOTATION) {
            policy.codes = v
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(CODES_ANNOTATION, v, "comma-separated HTTP status codes"))?;
        }
        for (key, slot) in [
            (MIN_WAIT_ANNOTATION, &mut policy.min_wait),
            (MAX_WAIT_ANNOTATION, &mut policy.max_wait),
        ] {
            if let Some(v) = a.get(key) {
                *slot = parse_go_duration(v)
                    .ok_or_else(|| bad(key, v, "a duration such as 500ms or 10s"))?;
            }
        }
        if policy.min_wait > policy.max_wait {
            return Err(bad(
                MIN_WAIT_ANNOTATION,
                &format!("{:?}", policy.min_wait),
                "above max_wait",
            ));
        }
        Ok(policy)
    }

    /// Whether an outcome is worth another attempt: a transport failure (`None`) or a listed code.
    pub fn retries(&self, status: Option<u16>) -> bool {
        status.is_none_or(|s| self.codes.contains(&s))
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    ///
    /// Exponential from `min_wait`, capped at `max_wait`, with equal jitter: `jitter` in [0, 1]
    /// picks a point in the upper half of the step. A `Retry-After` from the function wins (up to
    /// [`MAX_RETRY_AFTER`]).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        let doublings = attempt.saturating_sub(1).min(31);
        let step = self
            .min_wait
            .saturating_mul(1 << doublings)
            .min(self.max_wait);
        let jitter = jitter.clamp(0.0, 1.0);
        (step / 2 + step.mul_f64(jitter) / 2).max(self.min_wait.min(step))
    }
}

/// Parses a Go-style duration as the watchdogs take it (`10s`, `1m30s`, `500ms`) or bare seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(split);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * scale).ok()?;
        rest = next;
    }
    (!s.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("ten"), None);
        assert_eq!(parse_go_duration("10x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn backoff_grows_stays_in_bounds_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..=40 {
            for jitter in [0.0, 0.3, 0.5, 1.0] {
                let d = p.backoff(attempt, None, jitter);
                assert!(
                    d >= p.min_wait && d <= p.max_wait,
                    "{attempt} {jitter}: {d:?}"
                );
            }
            assert!(p.backoff(attempt + 1, None, 1.0) >= p.backoff(attempt, None, 1.0));
        }
        assert_eq!(p.backoff(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(p.backoff(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(p.backoff(30, None, 1.0), Duration::from_secs(60));
        assert_eq!(
            p.backoff(2, Some(Duration::from_secs(7)), 0.5),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.backoff(2, Some(Duration::from_secs(99_999)), 0.5),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn annotations_override_and_are_checked() {
        let a = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let p = RetryPolicy::from_annotations(Some(&a(&[
            (ATTEMPTS_ANNOTATION, "3"),
            (CODES_ANNOTATION, "500, 503"),
            (MIN_WAIT_ANNOTATION, "100ms"),
            (MAX_WAIT_ANNOTATION, "2s"),
        ])))
        .unwrap();
        assert_eq!((p.attempts, p.codes.as_slice()), (3, &[500, 503][..]));
        assert!(p.retries(Some(503)) && p.retries(None) && !p.retries(Some(429)));
        for bad in [
            (ATTEMPTS_ANNOTATION, "0"),
            (ATTEMPTS_ANNOTATION, "many"),
            (CODES_ANNOTATION, "500,abc"),
            (MIN_WAIT_ANNOTATION, "soon"),
            (MIN_WAIT_ANNOTATION, "2m"),
        ] {
            assert!(
                RetryPolicy::from_annotations(Some(&a(&[bad]))).is_err(),
                "{bad:?}"
            );
        }
    }
}
