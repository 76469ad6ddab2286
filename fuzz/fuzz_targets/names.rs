//! Names, paths below a function and callback rules: any text parses or is refused, and what
//! is accepted keeps its promise.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(r) = sluice_core::FunctionRef::parse(text, None) {
        let again = sluice_core::FunctionRef::parse(&format!("{}.{}", r.name, r.namespace), None);
        assert_eq!(again.as_ref(), Ok(&r));
    }
    let _ = sluice_core::check_function_path(text);
    if let Ok(rule) = text.parse::<sluice_core::CallbackRule>() {
        assert_eq!(rule.to_string().parse::<sluice_core::CallbackRule>(), Ok(rule));
    }
});
