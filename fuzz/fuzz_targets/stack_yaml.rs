//! A `stack.yml`: read or refused, and every function in what was read gives a deployment or
//! an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(stack) = sluice_cli::stack::Stack::parse(text) {
        for (name, f) in &stack.functions {
            let _ = sluice_cli::stack::deployment(f, name, std::path::Path::new("."));
        }
    }
});
