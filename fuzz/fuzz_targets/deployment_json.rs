//! A deployment body (`POST /system/functions`): parsed or refused, bounds-checked, and an
//! accepted one survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::FunctionDeployment;

fuzz_target!(|body: &[u8]| {
    if let Ok(d) = serde_json::from_slice::<FunctionDeployment>(body) {
        let _ = d.check_bounds();
        let again: FunctionDeployment =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);
    }
});
