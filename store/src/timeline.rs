//! A call's timeline as the calls table keeps it, read back into `CallTimeline`.
//!
//! The SQL statements that start attempts, record outcomes, callbacks and re-drives append to
//! (or complete) JSON arrays on the call's row; this is their format, and what their entries
//! mean: in particular an attempt that never finished was interrupted, unless it is the one
//! the call is running now.

use serde::Deserialize;
use sluice_core::{
    AttemptOutcome, CallAttempt, CallRedrive, CallState, CallTimeline, CallbackDelivery,
    CallbackOutcome, TIMELINE_ERROR_CHARS, Timestamp,
};

/// An entry of `attempt_log`: written at the start, completed by the finish.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredAttempt {
    attempt: i64,
    #[serde(default)]
    redrive: i64,
    /// Milliseconds since the epoch, as every time in the calls table.
    started_at: i64,
    #[serde(default)]
    finished_at: Option<i64>,
    #[serde(default)]
    duration_ms: Option<i64>,
    #[serde(default)]
    status_code: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    /// The outcome's state as the finish recorded it: `succeeded`, `failed`, or `queued` for
    /// an attempt that failed and was to be retried.
    #[serde(default)]
    state: Option<String>,
}

/// An entry of `redrive_log`.
#[derive(Debug, Deserialize)]
struct StoredRedrive {
    redrive: i64,
    /// Milliseconds since the epoch.
    at: i64,
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The timeline of a call in `state` from its row's `attempt_log`, `callback_log` (each entry
/// a `CallbackOutcome`, as `record_callback` writes it) and `redrive_log`.
pub(crate) fn read(
    attempts: &str,
    callbacks: &str,
    redrives: &str,
    state: CallState,
) -> Result<CallTimeline, serde_json::Error> {
    let attempts: Vec<StoredAttempt> = serde_json::from_str(attempts)?;
    let callbacks: Vec<CallbackOutcome> = serde_json::from_str(callbacks)?;
    let redrives: Vec<StoredRedrive> = serde_json::from_str(redrives)?;
    let last = attempts.len().saturating_sub(1);
    let attempts = attempts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let outcome = match a.state.as_deref() {
                Some("succeeded") => AttemptOutcome::Succeeded,
                // Failed for good, or failed and queued again for a retry.
                Some(_) => AttemptOutcome::Failed,
                None if i == last && state == CallState::Running => AttemptOutcome::Running,
                // Started again (or the call moved on) without this attempt finishing.
                None => AttemptOutcome::Interrupted,
            };
            CallAttempt {
                attempt: count(a.attempt),
                redrive: count(a.redrive),
                started_at: Timestamp::from_millis(a.started_at),
                finished_at: a.finished_at.map(Timestamp::from_millis),
                duration_seconds: a.duration_ms.map(|ms| ms as f64 / 1000.0),
                status_code: a.status_code.and_then(|c| u16::try_from(c).ok()),
                error: a.error,
                outcome,
            }
        })
        .collect();
    let callbacks = callbacks
        .into_iter()
        .map(|c| CallbackDelivery {
            attempt: c.attempts,
            at: c.at,
            delivered: c.delivered,
            status_code: c.status_code,
            error: c.error,
        })
        .collect();
    let redrives = redrives
        .into_iter()
        .map(|r| CallRedrive {
            redrive: count(r.redrive),
            at: Timestamp::from_millis(r.at),
        })
        .collect();
    Ok(CallTimeline {
        attempts,
        callbacks,
        redrives,
    })
}

/// `error` cut to [`TIMELINE_ERROR_CHARS`] characters, if it is longer; `None` if it is not
/// (the common case: nothing is copied).
pub(crate) fn shortened(error: &str) -> Option<String> {
    if error.len() <= TIMELINE_ERROR_CHARS {
        // No more bytes than the bound: no more characters either.
        return None;
    }
    let (cut, _) = error.char_indices().nth(TIMELINE_ERROR_CHARS)?;
    Some(error[..cut].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_attempt_is_running_only_if_it_is_the_current_one() {
        let attempts = r#"[
            {"attempt": 1, "redrive": 0, "startedAt": 1000},
            {"attempt": 2, "redrive": 0, "startedAt": 2000, "finishedAt": 2500, "durationMs": 500,
             "statusCode": 503, "error": "function answered 503", "state": "queued"},
            {"attempt": 3, "redrive": 0, "startedAt": 3000, "finishedAt": 3010, "durationMs": 10,
             "statusCode": 200, "error": null, "state": "succeeded"},
            {"attempt": 1, "redrive": 1, "startedAt": 4000}
        ]"#;
        let redrives = r#"[{"redrive": 1, "at": 3500}]"#;
        let running = read(attempts, "[]", redrives, CallState::Running).unwrap();
        let outcomes: Vec<_> = running.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [
                AttemptOutcome::Interrupted,
                AttemptOutcome::Failed,
                AttemptOutcome::Succeeded,
                AttemptOutcome::Running
            ]
        );
        let failed = &running.attempts[1];
        assert_eq!(failed.duration_seconds, Some(0.5));
        assert_eq!(failed.status_code, Some(503));
        assert_eq!(failed.finished_at, Some(Timestamp::from_millis(2500)));
        assert_eq!(running.attempts[2].error, None);
        assert_eq!(running.attempts[3].redrive, 1);
        assert_eq!(
            running.redrives,
            [CallRedrive {
                redrive: 1,
                at: Timestamp::from_millis(3500)
            }]
        );
        // The same last attempt on a call that is no longer running never finished.
        let queued = read(attempts, "[]", "[]", CallState::Queued).unwrap();
        assert_eq!(
            queued.attempts.last().unwrap().outcome,
            AttemptOutcome::Interrupted
        );
    }

    #[test]
    fn callback_deliveries_are_read_as_record_callback_writes_them() {
        let tries = [
            CallbackOutcome {
                delivered: false,
                status_code: Some(503),
                error: Some("receiver answered 503".into()),
                attempts: 1,
                at: Timestamp::from_millis(5_000),
            },
            CallbackOutcome {
                delivered: true,
                status_code: Some(200),
                error: None,
                attempts: 2,
                at: Timestamp::from_millis(6_000),
            },
        ];
        let stored = serde_json::to_string(&tries).unwrap();
        let timeline = read("[]", &stored, "[]", CallState::Succeeded).unwrap();
        assert_eq!(
            timeline.callbacks,
            [
                CallbackDelivery {
                    attempt: 1,
                    at: Timestamp::from_millis(5_000),
                    delivered: false,
                    status_code: Some(503),
                    error: Some("receiver answered 503".into()),
                },
                CallbackDelivery {
                    attempt: 2,
                    at: Timestamp::from_millis(6_000),
                    delivered: true,
                    status_code: Some(200),
                    error: None,
                },
            ]
        );
        assert!(read("{", "[]", "[]", CallState::Queued).is_err());
    }

    #[test]
    fn long_errors_are_cut_at_a_character() {
        assert_eq!(shortened("short"), None);
        let exact = "é".repeat(TIMELINE_ERROR_CHARS);
        assert_eq!(shortened(&exact), None, "as many characters as allowed");
        let long = format!("{exact}and more");
        assert_eq!(shortened(&long), Some(exact));
    }
}
