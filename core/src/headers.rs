//! Header names with a meaning to Sluice, and which headers never cross a proxy hop.

/// Where the queue worker POSTs an async call's result.
pub const CALLBACK_URL: &str = "x-callback-url";
/// The id of an async call, in and out.
pub const CALL_ID: &str = "x-call-id";
/// When the call was accepted, in nanoseconds since the epoch (as OpenFaaS sends it).
pub const START_TIME: &str = "x-start-time";
/// On a callback: the function's name, its HTTP status and how long it ran.
pub const FUNCTION_NAME: &str = "x-function-name";
pub const FUNCTION_STATUS: &str = "x-function-status";
pub const DURATION_SECONDS: &str = "x-duration-seconds";

/// Marks a request from Sluice's own queue worker (its value is a secret shared in-process), so
/// the gateway does not count it against the client in-flight limit. Never forwarded.
pub const INTERNAL: &str = "x-sluice-internal";

/// Connection-level headers (RFC 9110 §7.6.1) plus the ones a proxy recomputes (`host`,
/// `content-length`): never forwarded from one hop to the next.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Whether a header (name in lower case, as `http` stores it) stays on its own hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}
