//! What ties one call's hops together (client, gateway, queue, worker, function, callback): W3C
//! trace context (`traceparent`, `tracestate`), request ids, and the spans Sluice makes for the
//! hops, joined to OpenTelemetry's when the binary has installed its layer.
//!
//! Trace ids flow whether or not anything is exported: without OpenTelemetry, a span's id is
//! made here (a random number from the thread's generator), so the function and the callback
//! still see the caller's trace continued. With it, the span's id is OpenTelemetry's own, so
//! the `traceparent` sent on names a span that is exported.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// The W3C trace context header: `00-<trace id>-<parent id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor data that travels with `traceparent`, passed on as it came.
pub const TRACESTATE: &str = "tracestate";
/// A request's id, the client's (if usable) or one Sluice made; sent on to the function and
/// the callback, and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest `tracestate` passed on; a longer one is dropped. The spec asks that at least 512
/// bytes be kept; more would let a caller make every hop carry kilobytes.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Most list members a `tracestate` may have (the spec's limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `X-Request-Id` taken from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Length of a version 00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// The sampled flag: the caller may have recorded its part of the trace.
pub const SAMPLED: u8 = 0x01;
/// Flags passed on from a version 00 header: sampled, and Level 2's "random trace id". Others
/// are cleared, as the spec asks of flags a vendor does not know.
const KNOWN_FLAGS: u8 = 0x03;

/// A trace's id: 16 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A span's id: 8 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// A new random id, from the thread's generator (no system call).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 16] = rand::random();
            if bytes != [0; 16] {
                return Self(bytes);
            }
        }
    }

    /// The id these bytes are, unless they are all zero (no trace).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// Parses 32 lowercase hex digits, as a `traceparent` (and the calls API) writes it.
    pub fn parse(hex: &str) -> Option<Self> {
        let mut bytes = [0; 16];
        decode_hex(hex.as_bytes(), &mut bytes)?;
        Self::from_bytes(bytes)
    }
}

impl SpanId {
    /// A new random id, from the thread's generator (no system call).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 8] = rand::random();
            if bytes != [0; 8] {
                return Self(bytes);
            }
        }
    }

    /// The id these bytes are, unless they are all zero (no span).
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0; 32];
        encode_hex(&self.0, &mut out);
        f.write_str(ascii(&out))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0; 16];
        encode_hex(&self.0, &mut out);
        f.write_str(ascii(&out))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A `traceparent`: which trace a request belongs to, and which span sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The span of the hop that sent the request (the receiver's parent).
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// A new trace, as started where a request came with no usable `traceparent`: sampled, so
    /// functions that record their own spans do so under it.
    pub fn root() -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: SpanId::random(),
            flags: SAMPLED,
        }
    }

    /// The same trace, sent on by a new span of this hop (its id made here).
    pub fn child(&self) -> Self {
        Self {
            parent_id: SpanId::random(),
            ..*self
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Parses a `traceparent` value as the W3C spec says: version 00 exactly, lowercase hex,
    /// neither id all zeros; a later version is read for its version 00 fields if it is at least
    /// as long and goes on with `-`; version `ff` is invalid. `None` means "no usable context":
    /// the receiver starts a new trace (and drops the `tracestate` that came with it).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let mut version = [0; 1];
        decode_hex(&value[..2], &mut version)?;
        let later = match version[0] {
            0 if value.len() == TRACEPARENT_LEN => false,
            0 | 0xff => return None,
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
            _ => true,
        };
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let (mut trace, mut parent, mut flags) = ([0; 16], [0; 8], [0; 1]);
        decode_hex(&value[3..35], &mut trace)?;
        decode_hex(&value[36..52], &mut parent)?;
        decode_hex(&value[53..55], &mut flags)?;
        // A later version's flags may mean other things: only "sampled" is read from it.
        let known = if later { SAMPLED } else { KNOWN_FLAGS };
        Some(Self {
            trace_id: TraceId::from_bytes(trace)?,
            parent_id: SpanId::from_bytes(parent)?,
            flags: flags[0] & known,
        })
    }

    /// The header's value, version 00, made on the stack.
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        encode_hex(&self.trace_id.0, &mut out[3..35]);
        encode_hex(&self.parent_id.0, &mut out[36..52]);
        encode_hex(&[self.flags], &mut out[53..55]);
        out
    }

    /// The context a request's `traceparent` header values give: exactly one value, valid. Two
    /// or more cannot be told apart, so they are as good as none.
    pub fn from_values<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<Self> {
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(first)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.encode()))
    }
}

/// Whether a `tracestate` value may be passed on: at most [`MAX_TRACESTATE_LEN`] bytes, at most
/// 32 list members, each `key=value` as the spec spells them (a key of lowercase letters,
/// digits and `_-*/`, with an optional `@system`; a value of printable ASCII but `,` and `=`,
/// not ending in a space). Empty members (`a=1,,b=2`) are allowed, as the spec allows them, but
/// not a value of separators and spaces alone; only printable ASCII and spaces are passed on (a tab the
/// spec allows around members is not).
pub fn tracestate_is_valid(value: &[u8]) -> bool {
    if value.len() > MAX_TRACESTATE_LEN || !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return false;
    }
    let mut members = 0;
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS {
            return false;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        if !tracestate_key_is_valid(&member[..eq]) || !tracestate_value_is_valid(&member[eq + 1..])
        {
            return false;
        }
    }
    value.is_empty() || members > 0
}

fn tracestate_key_is_valid(key: &[u8]) -> bool {
    let key_char = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let (tenant, system) = match key.iter().position(|&b| b == b'@') {
        Some(at) => (&key[..at], Some(&key[at + 1..])),
        None => (key, None),
    };
    let tenant_ok = match system {
        // `tenant@system`: the tenant may start with a digit, the system may not.
        Some(_) => (1..=241).contains(&tenant.len()),
        None => (1..=256).contains(&tenant.len()) && tenant[0].is_ascii_lowercase(),
    };
    let system_ok = system.is_none_or(|s| (1..=14).contains(&s.len()) && s[0].is_ascii_lowercase());
    tenant_ok
        && system_ok
        && tenant.iter().all(key_char)
        && system.is_none_or(|s| s.iter().all(key_char))
}

fn tracestate_value_is_valid(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

/// Whether a client's `X-Request-Id` is used as it is: 1 to [`MAX_REQUEST_ID_LEN`] letters,
/// digits or `-_.:@/+=` (UUIDs, hex and base64 ids), so it is safe in a header, a log line and a
/// JSON document. Anything else is replaced with a fresh id.
pub fn request_id_is_valid(value: &[u8]) -> bool {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(b);
    !value.is_empty() && value.len() <= MAX_REQUEST_ID_LEN && value.iter().all(ok)
}

/// Set once the binary has installed the OpenTelemetry layer (and its global tracer provider):
/// until then nothing here calls into OpenTelemetry, so a Sluice that exports nothing pays
/// nothing for it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says that spans are exported from now on (called by the binary once it has installed the
/// OpenTelemetry layer and set the global tracer provider).
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Release);
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// A span of Sluice's place in a trace: the context its hop sends on (`traceparent`, with the
/// span as parent), and, when OpenTelemetry records it, its OpenTelemetry context.
#[derive(Debug, Clone)]
pub struct SpanTrace {
    context: TraceParent,
    otel: Option<opentelemetry::Context>,
}

impl SpanTrace {
    /// Joins `span` to the trace a caller's (or a stored) `parent` context belongs to, or to a
    /// new trace when there is none.
    pub fn remote(span: &tracing::Span, parent: Option<&TraceParent>) -> Self {
        if let Some(joined) = otel::join(span, parent.map(otel::remote_context)) {
            return joined;
        }
        Self {
            context: parent.map_or_else(TraceParent::root, TraceParent::child),
            otel: None,
        }
    }

    /// Joins `span` under another span of this process's own.
    pub fn local(span: &tracing::Span, parent: &SpanTrace) -> Self {
        let parent_cx = parent
            .otel
            .clone()
            .unwrap_or_else(|| otel::remote_context(&parent.context));
        if let Some(joined) = otel::join(span, Some(parent_cx)) {
            return joined;
        }
        Self {
            context: parent.context.child(),
            otel: None,
        }
    }

    /// What the span's hop sends on: its trace, the span as parent.
    pub fn context(&self) -> &TraceParent {
        &self.context
    }

    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id
    }

    /// Whether OpenTelemetry records the span (so it will be exported).
    pub fn exported(&self) -> bool {
        self.otel.is_some()
    }
}

/// A span that began before it could be made (the time a call waited on the queue: it starts at
/// the submission, in another process perhaps), exported with its own start and end under
/// `parent`. Does nothing unless spans are exported.
pub fn past_span(
    name: &'static str,
    parent: &TraceParent,
    start: SystemTime,
    end: SystemTime,
    attributes: &[(&'static str, String)],
) {
    if exporting() {
        otel::past_span(name, parent, start, end, attributes);
    }
}

/// The calls into OpenTelemetry, made only while spans are exported.
mod otel {
    use std::time::SystemTime;

    use opentelemetry::trace::{
        Span as _, SpanContext, TraceContextExt as _, TraceFlags, TraceState, Tracer as _,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::{SpanId, SpanTrace, TraceId, TraceParent};

    /// The OpenTelemetry context of a span elsewhere (another process, or a stored call).
    pub(super) fn remote_context(parent: &TraceParent) -> opentelemetry::Context {
        let span = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(parent.trace_id.0),
            opentelemetry::trace::SpanId::from_bytes(parent.parent_id.0),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }

    /// Gives `span` its parent and reads the context OpenTelemetry made for it; `None` when
    /// nothing is exported or the span is not recorded (filtered out).
    pub(super) fn join(
        span: &tracing::Span,
        parent: Option<opentelemetry::Context>,
    ) -> Option<SpanTrace> {
        if !super::exporting() || span.is_disabled() {
            return None;
        }
        if let Some(parent) = parent {
            // Fails only if the layer is not there or the span has started (it has not: it
            // was just made); either way the span's own context below says what it became.
            let _ = span.set_parent(parent);
        }
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if !own.is_valid() {
            return None;
        }
        let context = TraceParent {
            trace_id: TraceId::from_bytes(own.trace_id().to_bytes())?,
            parent_id: SpanId::from_bytes(own.span_id().to_bytes())?,
            flags: own.trace_flags().to_u8(),
        };
        Some(SpanTrace {
            context,
            otel: Some(cx),
        })
    }

    pub(super) fn past_span(
        name: &'static str,
        parent: &TraceParent,
        start: SystemTime,
        end: SystemTime,
        attributes: &[(&'static str, String)],
    ) {
        let tracer = opentelemetry::global::tracer("sluice");
        let mut span = tracer
            .span_builder(name)
            .with_start_time(start)
            .with_attributes(
                attributes
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone())),
            )
            .start_with_context(&tracer, &remote_context(parent));
        span.end_with_timestamp(end.max(start));
    }
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Reads lowercase hex (the only case W3C trace context allows) into `out`; `None` for any
/// other character or a length that is not twice `out`'s.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Hex digits and dashes made here are ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_round_trips() {
        let parsed = TraceParent::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), SPEC_EXAMPLE);
        assert_eq!(&parsed.encode()[..], SPEC_EXAMPLE.as_bytes());
    }

    #[test]
    fn invalid_headers_are_as_good_as_none() {
        let bad = [
            "",
            // Upper case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id and parent id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with anything after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            // Short, wrong separators, not hex.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version must go on with '-' after the version 00 fields.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-holds";
        let parsed = TraceParent::parse(value.as_bytes()).unwrap();
        assert_eq!(parsed.flags, SAMPLED, "only the sampled flag is read");
        assert!(
            parsed
                .to_string()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn unknown_flags_are_cleared_and_known_ones_kept() {
        let parsed =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(parsed.flags, 0x03);
        let unsampled =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
        assert!(
            !unsampled.child().sampled(),
            "a child keeps the caller's decision"
        );
    }

    #[test]
    fn two_traceparent_headers_are_none() {
        let one = [SPEC_EXAMPLE.as_bytes()];
        assert!(TraceParent::from_values(one.into_iter()).is_some());
        let two = [SPEC_EXAMPLE.as_bytes(), SPEC_EXAMPLE.as_bytes()];
        assert!(TraceParent::from_values(two.into_iter()).is_none());
        assert!(TraceParent::from_values(std::iter::empty()).is_none());
    }

    #[test]
    fn a_child_continues_the_trace_with_a_new_parent() {
        let parent = TraceParent::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(child.flags, parent.flags);
        let (a, b) = (TraceParent::root(), TraceParent::root());
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.sampled());
    }

    #[test]
    fn trace_ids_parse_as_written() {
        let id = TraceId::random();
        assert_eq!(TraceId::parse(&id.to_string()), Some(id));
        assert_eq!(TraceId::parse("00000000000000000000000000000000"), None);
        assert_eq!(TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736"), None);
        assert_eq!(TraceId::parse("4bf92f"), None);
    }

    #[test]
    fn tracestate_is_checked() {
        for ok in [
            "rojo=00f067aa0ba902b7",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=1 , congo=2",
            "a=1,,b=2",
            "tenant1@vendor=x",
            "k/v_*-=a b",
            "",
        ] {
            assert!(tracestate_is_valid(ok.as_bytes()), "{ok:?}");
        }
        let too_many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let too_long = format!("k={}", "v".repeat(MAX_TRACESTATE_LEN));
        for bad in [
            "novalue",
            "Upper=1",
            "k=",
            "k=a,b",
            "k=del\u{7f}",
            "1digit=x",
            "k=tab\there",
            "t@Vendor=x",
            "t@=x",
            "k=\u{e9}",
            " ",
            "\t",
            ",",
            "\ta=1",
            &too_many,
            &too_long,
        ] {
            assert!(!tracestate_is_valid(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_checked() {
        for ok in [
            "9f1c2a3e-0000-4000-8000-000000000001",
            "req_17",
            "abc+/=",
            "a.b:c@d",
        ] {
            assert!(request_id_is_valid(ok.as_bytes()), "{ok:?}");
        }
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "has space", "new\nline", "quote\"", "semi;colon", &long] {
            assert!(!request_id_is_valid(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn without_opentelemetry_a_span_gets_an_id_made_here() {
        // No layer is installed in this test process, so the span is disabled: nothing of
        // OpenTelemetry is touched, and ids still flow.
        let span = tracing::Span::none();
        let parent = TraceParent::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        let joined = SpanTrace::remote(&span, Some(&parent));
        assert!(!joined.exported());
        assert_eq!(joined.trace_id(), parent.trace_id);
        assert_ne!(joined.context().parent_id, parent.parent_id);
        let child = SpanTrace::local(&span, &joined);
        assert_eq!(child.trace_id(), parent.trace_id);
        assert_ne!(child.context().parent_id, joined.context().parent_id);
        let root = SpanTrace::remote(&span, None);
        assert_ne!(root.trace_id(), parent.trace_id);
    }
}
