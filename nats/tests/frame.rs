//! Properties of the message frame: a queued call survives it whole, and any bytes a worker is
//! handed decode to a call or an error naming why, never a panic.

use bytes::Bytes;
use proptest::prelude::*;
use sluice_core::{CallId, CallMeta, FunctionRef, Timestamp};
use sluice_nats::{frame, unframe};

fn meta(id: &str, path: &str, headers: Vec<(String, String)>) -> CallMeta {
    CallMeta {
        id: CallId::parse(id).unwrap(),
        function: FunctionRef::parse("echo", None).unwrap(),
        method: "POST".into(),
        path: path.into(),
        query: Some("a=1".into()),
        headers,
        callback_url: None,
        submitted_at: Timestamp::from_millis(1_700_000_000_000),
        queue: None,
        redrive: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_call_survives_the_frame(
        id in "[a-zA-Z0-9_.:-]{1,40}",
        path in "/[a-z0-9/]{0,30}",
        headers in proptest::collection::vec(("[a-z-]{1,12}", ".{0,30}"), 0..5),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        inline in any::<bool>(),
    ) {
        let meta = meta(&id, &path, headers);
        let json = serde_json::to_vec(&meta).unwrap();
        let len = u32::try_from(json.len()).unwrap();
        let framed = frame(len, &json, inline.then_some(&body[..]));
        let (back, rest) = unframe(&framed).unwrap();
        prop_assert_eq!(back, meta);
        prop_assert_eq!(rest.as_ref(), if inline { &body[..] } else { &[][..] });
    }

    #[test]
    fn any_bytes_decode_or_say_why(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(why) = unframe(&Bytes::from(bytes)) {
            prop_assert!(!why.is_empty());
        }
    }

    /// A frame whose length prefix lies, longer or shorter than its metadata, is refused,
    /// never trusted past the message.
    #[test]
    fn a_lying_length_is_refused(
        longer in any::<bool>(),
        by in 1u32..64,
        // Not whitespace, which JSON would take after the metadata.
        body in proptest::collection::vec(33u8..=255, 0..64),
    ) {
        let json = serde_json::to_vec(&meta("c1", "/", vec![])).unwrap();
        let len = u32::try_from(json.len()).unwrap();
        let lie = if longer { len + by } else { len.saturating_sub(by) };
        let framed = frame(lie, &json, Some(&body));
        prop_assert!(unframe(&framed).is_err(), "length {lie} for {len} bytes of metadata");
    }
}
