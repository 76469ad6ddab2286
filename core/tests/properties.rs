//! Properties of what Sluice takes from clients, checked on generated input (the same targets
//! the fuzzers in `fuzz/` run for long by hand): names, paths below a function, deployment JSON
//! and the callback policy never panic, and what they accept is what they promise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use sluice_core::{CallbackPolicy, CallbackRule, FunctionDeployment, FunctionRef};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any string is a name or an error; an accepted one is two DNS-1123 labels, prints as it
    /// parses, and parses back to itself.
    #[test]
    fn names_parse_or_refuse(raw in ".{0,80}", ns in proptest::option::of("[a-z0-9.-]{0,12}")) {
        if let Ok(r) = FunctionRef::parse(&raw, ns.as_deref()) {
            for label in [&r.name, &r.namespace] {
                prop_assert!(!label.is_empty() && label.len() <= 63);
                prop_assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                prop_assert!(!label.starts_with('-') && !label.ends_with('-'));
            }
            let again = FunctionRef::parse(&format!("{}.{}", r.name, r.namespace), None).unwrap();
            prop_assert_eq!(again, r);
        }
    }

    /// `name.namespace` splits at the last dot, as OpenFaaS's gateway splits it: the namespace
    /// taken is always what follows the last dot, and a name with dots in it is refused as a
    /// name, never blamed on the namespace.
    #[test]
    fn qualified_names_split_at_the_last_dot(
        parts in proptest::collection::vec("[a-z0-9]{1,8}", 2..5),
    ) {
        let qualified = parts.join(".");
        let namespace = parts.last().unwrap();
        match FunctionRef::parse(&qualified, Some("elsewhere")) {
            Ok(r) => {
                prop_assert_eq!(parts.len(), 2);
                prop_assert_eq!(&r.name, &parts[0]);
                prop_assert_eq!(&r.namespace, namespace);
            }
            Err(e) => {
                prop_assert!(parts.len() > 2);
                let name = &qualified[..qualified.len() - namespace.len() - 1];
                prop_assert_eq!(e, sluice_core::NameError::Invalid {
                    what: "function name",
                    value: name.to_owned(),
                });
            }
        }
    }

    /// A path below a function that is accepted stays below it once a URL parser has seen it,
    /// whatever dots, slashes and escapes it holds.
    #[test]
    fn accepted_paths_stay_below_their_function(
        segments in proptest::collection::vec(
            prop_oneof![
                Just(".".to_owned()), Just("..".to_owned()), Just("%2e".to_owned()),
                Just("%2E%2e".to_owned()), Just(".%2e".to_owned()), Just("%2f".to_owned()),
                Just("".to_owned()), Just("\\".to_owned()), Just("a.b".to_owned()),
                "[a-zA-Z0-9._~%-]{0,6}",
            ],
            0..8,
        ),
    ) {
        let path = format!("/{}", segments.join("/"));
        if sluice_core::check_function_path(&path).is_ok() {
            let url = url::Url::parse(&format!("http://gw/function/echo.ns{path}")).unwrap();
            prop_assert!(
                url.path() == "/function/echo.ns" || url.path().starts_with("/function/echo.ns/"),
                "{path} became {}", url.path()
            );
        }
    }

    /// Any bytes as a deployment body: parsed or refused, and bounds-checked without panic; an
    /// accepted one survives a round trip through JSON.
    #[test]
    fn deployment_json_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(d) = serde_json::from_slice::<FunctionDeployment>(&body) {
            let _ = d.check_bounds();
            let again: FunctionDeployment =
                serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            prop_assert_eq!(again, d);
        }
    }

    /// Generated deployments: the bounds hold exactly where the sizes say.
    #[test]
    fn deployment_bounds_follow_the_sizes(labels in 0usize..80, value in 0usize..1100) {
        let d = FunctionDeployment {
            service: "f".into(),
            env_process: Some("cat".into()),
            labels: Some((0..labels).map(|i| (format!("k{i}"), "v".repeat(value))).collect()),
            ..Default::default()
        };
        let fits = labels <= 64 && (labels == 0 || value <= 1024);
        prop_assert_eq!(d.check_bounds().is_ok(), fits);
    }

    /// An IPv4 address is judged the same however it is written as IPv6 (mapped, NAT64,
    /// 6to4): no spelling gets past the policy.
    #[test]
    fn the_policy_sees_through_ipv6_spellings(v4 in any::<u32>(), private in any::<bool>()) {
        let policy = CallbackPolicy { allow_private: private, ..Default::default() };
        let v4 = Ipv4Addr::from(v4);
        let [a, b, c, d] = v4.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        let plain = policy.check("x", IpAddr::V4(v4)).is_ok();
        for v6 in [
            v4.to_ipv6_mapped(),
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
            Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
        ] {
            prop_assert_eq!(policy.check("x", IpAddr::V6(v6)).is_ok(), plain, "{}", v6);
        }
    }

    /// Any text as a callback rule: parsed or refused; a parsed one prints as something that
    /// parses to the same rule.
    #[test]
    fn callback_rules_parse_or_refuse(
        raw in prop_oneof![".{0,40}", "(\\*\\.)?[0-9]{1,3}(\\.[0-9]{1,3}){0,4}\\.{0,2}"],
    ) {
        if let Ok(rule) = raw.parse::<CallbackRule>() {
            let again: CallbackRule = rule.to_string().parse().unwrap();
            prop_assert_eq!(again, rule);
        }
    }
}
