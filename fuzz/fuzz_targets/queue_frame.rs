//! A JetStream message as a worker receives it: a call or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let _ = sluice_nats::unframe(&bytes::Bytes::copy_from_slice(payload));
});
