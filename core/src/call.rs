//! Async calls: the request as queued, and the record of what became of it.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::name::FunctionRef;
use crate::time::Timestamp;
use crate::trace::TraceParent;

/// Longest call id accepted from a client's `X-Call-Id`.
pub const MAX_CALL_ID_LEN: usize = 128;

/// The id of an async call: the client's own `X-Call-Id`, or a UUID Sluice made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(String);

/// Why a client-supplied call id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "X-Call-Id must be 1 to {MAX_CALL_ID_LEN} characters of letters, digits, '-', '_', '.' or ':'"
)]
pub struct InvalidCallId;

impl CallId {
    /// Accepts a client's id if it is safe to use in URLs, logs and headers.
    pub fn parse(s: &str) -> Result<Self, InvalidCallId> {
        if !Self::is_valid(s.as_bytes()) {
            return Err(InvalidCallId);
        }
        Ok(Self(s.to_owned()))
    }

    /// Whether `s` would be accepted by [`CallId::parse`], without making one (the sync path
    /// checks a caller's `X-Call-Id` on every request).
    pub fn is_valid(s: &[u8]) -> bool {
        let ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':');
        !s.is_empty() && s.len() <= MAX_CALL_ID_LEN && s.iter().all(ok)
    }

    /// Wraps an id that was generated or already validated.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything about an async call except its body: what the queue worker needs to replay the
/// request against the function and deliver the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMeta {
    pub id: CallId,
    pub function: FunctionRef,
    /// The method the client used; async calls keep it (OpenFaaS turns everything into POST).
    pub method: String,
    /// Path below the function, starting with `/` (`/` when none was given).
    pub path: String,
    pub query: Option<String>,
    /// Request headers to replay, in order, hop-by-hop and Sluice's own control headers removed.
    pub headers: Vec<(String, String)>,
    pub callback_url: Option<String>,
    pub submitted_at: Timestamp,
    /// The named queue the call waits on (`com.openfaas.queue`); `None` for the default queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueName>,
    /// How many times the call was re-driven after failing for good; a re-drive is a new
    /// message on the queue, not a duplicate of the first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrive: u32,
}

impl CallMeta {
    /// A stored request header's value (names are stored in lower case, as `http` has them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The trace the call continues: the `traceparent` stored with it, whose parent is the
    /// gateway's submit span (the caller's trace, or one the gateway started).
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.header(crate::trace::TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()))
    }

    /// The `X-Request-Id` stored with the call (the client's, or one the gateway made).
    pub fn request_id(&self) -> Option<&str> {
        self.header(crate::trace::REQUEST_ID)
    }
}

/// Checks a path below a function (`/a/b`, as it came, still percent-encoded): it belongs to
/// the function and must not climb out of it. A `.` or `..` segment (also spelled `%2e`) would
/// be resolved by whoever parses the URL next, turning `/function/echo/../../system/functions`
/// into a management route; `\` is a separator to some parsers; `#` ends a path.
pub fn check_function_path(path: &str) -> Result<(), String> {
    let dot_segment = path.split('/').any(|segment| {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    });
    if !path.starts_with('/') || dot_segment || path.contains(['\\', '#']) {
        let shown: String = path.chars().take(200).collect();
        return Err(format!(
            "the path below a function must start with '/' and may not contain '.' or '..' \
             segments, '\\' or '#': {shown:?}"
        ));
    }
    Ok(())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The annotation that puts a function's async calls on a named queue, as in OpenFaaS.
pub const QUEUE_ANNOTATION: &str = "com.openfaas.queue";

/// The name of a queue: 1 to 64 letters, digits, `-` or `_`, so it can name a NATS subject and
/// consumer as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

/// Why a queue name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue name {0:?} must be 1 to 64 letters, digits, '-' or '_'")]
pub struct InvalidQueueName(pub String);

impl QueueName {
    /// The queue calls go to when their function names none.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(s: &str) -> Result<Self, InvalidQueueName> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
        if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
            return Err(InvalidQueueName(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn default_queue() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The queue a deployment's annotations name, if any.
    pub fn from_annotations(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<Option<Self>, InvalidQueueName> {
        annotations
            .and_then(|a| a.get(QUEUE_ANNOTATION))
            .map(|q| Self::parse(q.trim()))
            .transpose()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidQueueName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<QueueName> for String {
    fn from(q: QueueName) -> Self {
        q.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A call as it sits on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCall {
    pub meta: CallMeta,
    pub body: Bytes,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Cancelled by a client while still queued; it will not run.
    Cancelled,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    pub state: CallState,
    /// The HTTP status the function (or the platform on its behalf) answered with.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub finished_at: Timestamp,
    pub duration_ms: u64,
}

/// How delivering the result to `X-Callback-Url` went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackOutcome {
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    pub at: Timestamp,
}

/// The function's response to a finished call, as kept for `GET /system/calls/<id>/result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub status_code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub stored_at: Timestamp,
}

/// The body of `GET /system/calls/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: CallId,
    pub function: String,
    pub namespace: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub state: CallState,
    /// Invocations started so far (a call redelivered after a crash counts each run).
    pub attempts: u32,
    pub submitted_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackOutcome>,
    /// Times the call was re-driven after failing for good (each re-drive counts its attempts
    /// from zero again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrives: u32,
    /// What happened to the call step by step (each attempt, callback delivery and re-drive),
    /// the most recent of each kept (see [`CallTimeline`]). Only [`CallStore::get`] fills it:
    /// listings ([`CallStore::list_calls`]) leave it `None`, and it is then left out of the
    /// JSON, so a page of calls stays cheap.
    ///
    /// [`CallStore::get`]: crate::CallStore::get
    /// [`CallStore::list_calls`]: crate::CallStore::list_calls
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<CallTimeline>,
    /// The W3C trace the call belongs to (32 hex digits): the caller's, or one the gateway
    /// started. Every hop of the call (submit, queue, attempts, callbacks) is in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The submission's `X-Request-Id` (the client's, or one the gateway made), sent on to
    /// the function and the callback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Attempts a call's timeline keeps: the most recent ones (older ones are dropped as new ones
/// are started).
pub const TIMELINE_ATTEMPTS: usize = 50;

/// Callback deliveries a call's timeline keeps, the most recent ones.
pub const TIMELINE_CALLBACKS: usize = 20;

/// Re-drives a call's timeline keeps, the most recent ones.
pub const TIMELINE_REDRIVES: usize = 20;

/// Characters of an attempt's or a callback delivery's error kept in the timeline.
pub const TIMELINE_ERROR_CHARS: usize = 500;

/// A call's history, for `GET /system/calls/<id>`: each list oldest first, each bounded
/// ([`TIMELINE_ATTEMPTS`], [`TIMELINE_CALLBACKS`], [`TIMELINE_REDRIVES`]; beyond, the oldest
/// entries are dropped). When the call was queued is the record's `submittedAt`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallTimeline {
    pub attempts: Vec<CallAttempt>,
    pub callbacks: Vec<CallbackDelivery>,
    pub redrives: Vec<CallRedrive>,
}

/// One attempt at running a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAttempt {
    /// The attempt's number, from 1, counted afresh after each re-drive (as the record's
    /// `attempts` is).
    pub attempt: u32,
    /// The re-drive the attempt belongs to: 0 for the attempts before any re-drive.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrive: u32,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How long the function took to answer (none for an attempt that did not finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// The HTTP status the function (or the platform on its behalf) answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it failed (at most [`TIMELINE_ERROR_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The call's current attempt, still running.
    Running,
    Succeeded,
    /// Failed: retried if another attempt follows, else the call failed with it.
    Failed,
    /// Never finished: the worker running it went away (a crash, a lost lease) and the call
    /// was started again, or its attempt was cut short some other way.
    Interrupted,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One try at delivering a call's result to its `X-Callback-Url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackDelivery {
    /// The try's number, from 1 (counted afresh after a re-drive, as the record's
    /// `callback.attempts` is).
    pub attempt: u32,
    pub at: Timestamp,
    pub delivered: bool,
    /// The receiver's status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it was not delivered (at most [`TIMELINE_ERROR_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A re-drive of a call that had failed for good (`POST /system/calls/<id>/retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRedrive {
    /// Which re-drive, from 1: the `redrive` of the attempts that followed it.
    pub redrive: u32,
    pub at: Timestamp,
}

impl CallRecord {
    /// The record of a call that was just accepted.
    pub fn queued(meta: &CallMeta) -> Self {
        Self {
            id: meta.id.clone(),
            function: meta.function.name.clone(),
            namespace: meta.function.namespace.clone(),
            method: meta.method.clone(),
            path: meta.path.clone(),
            callback_url: meta.callback_url.clone(),
            state: CallState::Queued,
            attempts: 0,
            submitted_at: meta.submitted_at,
            started_at: None,
            finished_at: None,
            duration_seconds: None,
            status_code: None,
            error: None,
            callback: None,
            redrives: 0,
            timeline: None,
            trace_id: meta.trace_parent().map(|t| t.trace_id.to_string()),
            request_id: meta.request_id().map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_checked() {
        assert!(CallId::parse("abc-123_x.y:z").is_ok());
        assert!(CallId::parse("").is_err());
        assert!(CallId::parse("a b").is_err());
        assert!(CallId::parse("../etc").is_err());
        assert!(CallId::parse(&"a".repeat(MAX_CALL_ID_LEN + 1)).is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            CallState::Queued,
            CallState::Running,
            CallState::Succeeded,
            CallState::Failed,
        ] {
            assert_eq!(CallState::parse(s.as_str()), Some(s));
        }
    }
}

#[cfg(test)]
mod path_tests {
    use super::check_function_path;

    #[test]
    fn paths_that_climb_out_are_refused() {
        for ok in [
            "/",
            "/a/b",
            "/a.b/..c/v1.2",
            "/a//b",
            "/%2f",
            "/..%2f",
            "/%252e%252e",
            "/a?",
        ] {
            assert!(check_function_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/..",
            "/../x",
            "/a/./b",
            "/%2e%2e/x",
            "/%2E%2e",
            "/.%2e",
            "/%2e",
            "/a\\b",
            "/a#b",
            "a/b",
            "",
        ] {
            assert!(check_function_path(bad).is_err(), "{bad}");
        }
    }
}
