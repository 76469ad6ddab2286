//! Properties of W3C trace context as Sluice reads and writes it (`sluice_core::trace`): any
//! header is a context or none, never a panic; what is accepted prints as the spec spells it and
//! reads back to itself; what is passed on (`tracestate`, `X-Request-Id`) is bounded and safe.

use proptest::prelude::*;
use sluice_core::trace::{
    MAX_REQUEST_ID_LEN, MAX_TRACESTATE_LEN, TRACEPARENT_LEN, TraceParent, request_id_is_valid,
    tracestate_is_valid,
};

/// A version 00 header made of arbitrary ids and flags.
fn header(trace: [u8; 16], parent: [u8; 8], flags: u8) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("00-{}-{}-{flags:02x}", hex(&trace), hex(&parent))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes parse or are refused; an accepted header encodes as a version 00 header of
    /// lowercase hex that parses back to the same context.
    #[test]
    fn any_bytes_parse_or_are_none(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Some(parsed) = TraceParent::parse(&raw) {
            let encoded = parsed.encode();
            prop_assert_eq!(encoded.len(), TRACEPARENT_LEN);
            prop_assert!(encoded.starts_with(b"00-"));
            prop_assert!(encoded.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-'));
            prop_assert_eq!(TraceParent::parse(&encoded), Some(parsed));
        }
    }

    /// Well-formed headers are read exactly: the ids as given, flags but the unknown ones, and
    /// all-zero ids refused.
    #[test]
    fn well_formed_headers_are_read_exactly(
        trace in any::<[u8; 16]>(),
        parent in any::<[u8; 8]>(),
        flags in any::<u8>(),
    ) {
        let value = header(trace, parent, flags);
        match TraceParent::parse(value.as_bytes()) {
            Some(parsed) => {
                prop_assert_eq!(parsed.trace_id.to_bytes(), trace);
                prop_assert_eq!(parsed.parent_id.to_bytes(), parent);
                prop_assert_eq!(parsed.flags, flags & 0x03);
                if flags & 0x03 == flags {
                    prop_assert_eq!(parsed.to_string(), value.clone());
                }
            }
            None => prop_assert!(trace == [0; 16] || parent == [0; 8]),
        }
        // Upper case is not the spec's hex: a new trace starts.
        let upper = value.to_uppercase();
        if upper != value {
            prop_assert_eq!(TraceParent::parse(upper.as_bytes()), None);
        }
    }

    /// A child keeps the trace and its flags, with a parent of its own.
    #[test]
    fn children_continue_the_trace(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags in 0u8..4) {
        prop_assume!(trace != [0; 16] && parent != [0; 8]);
        let parsed = TraceParent::parse(header(trace, parent, flags).as_bytes()).unwrap();
        let child = parsed.child();
        prop_assert_eq!(child.trace_id, parsed.trace_id);
        prop_assert_eq!(child.flags, parsed.flags);
        prop_assert_ne!(child.parent_id, parsed.parent_id);
    }

    /// A `tracestate` passed on is bounded and printable, with no character that could end a
    /// header or start another.
    #[test]
    fn tracestate_passed_on_is_bounded_and_printable(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        if tracestate_is_valid(&raw) {
            prop_assert!(raw.len() <= MAX_TRACESTATE_LEN);
            prop_assert!(raw.iter().all(|b| (0x20..=0x7e).contains(b)));
        }
    }

    /// Generated well-formed lists are accepted up to the bounds.
    #[test]
    fn well_formed_tracestate_is_kept(
        members in proptest::collection::vec(("[a-z][a-z0-9_*/-]{0,10}", "[!-+\\--<>-~]{1,12}"), 0..8),
    ) {
        let value = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        prop_assert!(tracestate_is_valid(value.as_bytes()), "{}", value);
    }

    /// A request id used as it came is short, and safe in a header, a log line and JSON.
    #[test]
    fn request_ids_kept_are_safe(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        if request_id_is_valid(&raw) {
            prop_assert!(!raw.is_empty() && raw.len() <= MAX_REQUEST_ID_LEN);
            prop_assert!(raw.iter().all(|b| b.is_ascii_graphic() && !b"\"\\,;".contains(b)));
        }
    }
}
