//! The scaling decision: properties over random loads, and scenarios on a hand-driven clock.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use sluice_autoscaler::kpa::{self, KpaState, Metric, Sample, ScaleConfig};

const SEC: Duration = Duration::from_secs(1);

/// A function that aims at exactly `target` per replica (proportion 1), measured in requests in
/// flight (the samples below carry the same load in every measure, so the decisions are the
/// same in `rps` and `cpu`).
fn config(min: u32, max: u32, target: f64, zero: bool) -> ScaleConfig {
    ScaleConfig {
        min,
        max,
        metric: Metric::Concurrency,
        target,
        utilization: 1.0,
        zero,
        zero_after: Duration::from_secs(5),
        ..ScaleConfig::default()
    }
}

/// One sample a second ending at `now`, with these concurrencies, oldest first.
fn samples(now: Duration, loads: &[f64]) -> Vec<Sample> {
    let n = loads.len() as u32;
    loads
        .iter()
        .enumerate()
        .map(|(i, &c)| Sample {
            at: now - SEC * (n - 1 - i as u32),
            concurrency: c,
            requests: c,
            cpu: c,
        })
        .collect()
}

fn decide(
    c: &ScaleConfig,
    s: &[Sample],
    now: Duration,
    current: u32,
    idle: Duration,
) -> (kpa::Decision, KpaState) {
    kpa::decide(c, s, now, current, idle, KpaState::default())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Leaving the reason unwritten changes nothing else: the same replicas, panic and state.
    #[test]
    fn an_unexplained_decision_is_the_same_decision(
        min in 1u32..5, extra in 0u32..30, target in 1.0f64..100.0, zero: bool,
        loads in prop::collection::vec(0.0f64..5000.0, 0..90),
        current in 0u32..60, idle_s in 0u64..100, panicked: bool,
    ) {
        let c = config(min, min + extra, target, zero);
        let now = Duration::from_secs(1000);
        let state = KpaState { panic_until: panicked.then_some(now + SEC * 10) };
        let (s, idle) = (samples(now, &loads), Duration::from_secs(idle_s));
        let (said, said_state) = kpa::decide(&c, &s, now, current, idle, state);
        let (quiet, quiet_state) = kpa::decide_explained(&c, &s, now, current, idle, state, false);
        prop_assert_eq!(said.desired, quiet.desired);
        prop_assert_eq!(said.panic, quiet.panic);
        prop_assert_eq!(said_state, quiet_state);
        prop_assert!(!said.reason.is_empty());
        prop_assert!(quiet.reason.is_empty());
    }

    /// Never above max; never below min unless idle and allowed to go to zero.
    #[test]
    fn stays_within_bounds(
        min in 1u32..5, extra in 0u32..30, target in 1.0f64..100.0, zero: bool,
        loads in prop::collection::vec(0.0f64..5000.0, 0..90),
        current in 0u32..60, idle_s in 0u64..100,
    ) {
        let c = config(min, min + extra, target, zero);
        let now = Duration::from_secs(1000);
        let (d, _) = decide(&c, &samples(now, &loads), now, current, Duration::from_secs(idle_s));
        prop_assert!(d.desired <= c.max, "{d:?}");
        let idle_zero = zero && Duration::from_secs(idle_s) >= c.zero_after;
        if !idle_zero {
            prop_assert!(d.desired >= c.min, "{d:?}");
        }
    }

    /// More load never asks for fewer replicas.
    #[test]
    fn more_load_never_fewer_replicas(
        target in 1.0f64..100.0,
        loads in prop::collection::vec(0.0f64..1000.0, 1..90),
        factor in 1.0f64..10.0, current in 1u32..40,
    ) {
        let c = config(1, 1000, target, false);
        let now = Duration::from_secs(1000);
        let more: Vec<f64> = loads.iter().map(|l| l * factor).collect();
        let (low, _) = decide(&c, &samples(now, &loads), now, current, Duration::ZERO);
        let (high, _) = decide(&c, &samples(now, &more), now, current, Duration::ZERO);
        prop_assert!(high.desired >= low.desired, "{low:?} then {high:?}");
    }

    /// One decision never shrinks below half, and in panic never shrinks at all.
    #[test]
    fn scale_down_is_bounded(
        loads in prop::collection::vec(0.0f64..1000.0, 1..90),
        current in 1u32..64,
    ) {
        let c = config(1, 64, 10.0, false);
        let now = Duration::from_secs(1000);
        let (d, _) = decide(&c, &samples(now, &loads), now, current, Duration::ZERO);
        prop_assert!(d.desired >= current / 2, "{d:?} from {current}");
        if d.panic {
            prop_assert!(d.desired >= current, "{d:?} from {current}");
        }
    }
}

/// A second a sample, `rate` requests started in each, `in_flight` at most at once and `cpu`
/// millicores used, over `seconds` seconds ending at `now`.
fn steady(now: Duration, seconds: u32, rate: f64, in_flight: f64, cpu: f64) -> Vec<Sample> {
    (0..seconds)
        .map(|i| Sample {
            at: now - SEC * (seconds - 1 - i),
            concurrency: in_flight,
            requests: rate,
            cpu,
        })
        .collect()
}

fn metric() -> impl Strategy<Value = Metric> {
    prop_oneof![
        Just(Metric::Rps),
        Just(Metric::Concurrency),
        Just(Metric::Cpu)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// In every measure, at any target and proportion: never above max, never below min
    /// (nothing here may go to zero), and a load held for a whole stable window gets exactly
    /// what it asks for, `load / (target × proportion)` rounded up, within the bounds.
    #[test]
    fn a_steady_load_gets_load_over_target_times_proportion_within_bounds(
        metric in metric(), min in 1u32..5, extra in 0u32..30,
        target in 0.5f64..200.0, proportion in 0.05f64..=1.0,
        rate in 0.0f64..2000.0, in_flight in 0.0f64..500.0, cpu in 0.0f64..20000.0,
        current in 1u32..60,
    ) {
        let c = ScaleConfig {
            min, max: min + extra, metric, target, utilization: proportion,
            ..ScaleConfig::default()
        };
        let now = Duration::from_secs(1000);
        let load = match metric {
            Metric::Rps => rate, Metric::Concurrency => in_flight, Metric::Cpu => cpu,
        };
        let s = steady(now, 60, rate, in_flight, cpu);
        let (d, _) = decide(&c, &s, now, current, Duration::from_secs(3600));
        prop_assert!(d.desired <= c.max && d.desired >= c.min, "{d:?}");
        let wanted = ((load / (target * proportion)).ceil() as u32).clamp(c.min, c.max);
        if !d.panic && wanted >= current / 2 {
            prop_assert_eq!(d.desired, wanted, "{:?}", d);
        }
    }

    /// More load, in the measure the function scales on, never asks for fewer replicas; load
    /// in the other measure changes nothing.
    #[test]
    fn more_of_the_scaled_load_never_fewer_replicas(
        metric in metric(), target in 0.5f64..100.0, proportion in 0.05f64..=1.0,
        rates in prop::collection::vec(0.0f64..1000.0, 1..90),
        in_flight in prop::collection::vec(0.0f64..1000.0, 90),
        cpu in prop::collection::vec(0.0f64..8000.0, 90),
        factor in 1.0f64..10.0, current in 1u32..40,
    ) {
        let c = ScaleConfig {
            min: 1, max: 1000, metric, target, utilization: proportion,
            ..ScaleConfig::default()
        };
        let now = Duration::from_secs(1000);
        // Each measure's loads, in the order [rps, in flight, cpu].
        let at = |[rates, in_flight, cpu]: [&[f64]; 3]| -> Vec<Sample> {
            let n = rates.len() as u32;
            (0..rates.len()).map(|i| Sample {
                at: now - SEC * (n - 1 - i as u32),
                requests: rates[i], concurrency: in_flight[i], cpu: cpu[i],
            }).collect()
        };
        let scaled = |xs: &[f64]| -> Vec<f64> { xs.iter().map(|x| x * factor).collect() };
        let loads = [rates.clone(), in_flight.clone(), cpu.clone()];
        let all_scaled = [scaled(&rates), scaled(&in_flight), scaled(&cpu)];
        let chosen = match metric { Metric::Rps => 0, Metric::Concurrency => 1, Metric::Cpu => 2 };
        // Only the chosen measure grows; then every measure but the chosen one.
        let pick = |grow: &dyn Fn(usize) -> bool| -> Vec<Sample> {
            let v: Vec<&[f64]> = (0..3)
                .map(|k| if grow(k) { &all_scaled[k][..] } else { &loads[k][..] })
                .collect();
            at([v[0], v[1], v[2]])
        };
        let base = pick(&|_| false);
        let more = pick(&|k| k == chosen);
        let other = pick(&|k| k != chosen);
        let (low, _) = decide(&c, &base, now, current, Duration::ZERO);
        let (high, _) = decide(&c, &more, now, current, Duration::ZERO);
        let (same, _) = decide(&c, &other, now, current, Duration::ZERO);
        prop_assert!(high.desired >= low.desired, "{low:?} then {high:?}");
        prop_assert_eq!(same.desired, low.desired);
    }

    /// A lower target proportion scales earlier: never fewer replicas for the same load.
    #[test]
    fn a_lower_proportion_never_fewer_replicas(
        metric in metric(), target in 0.5f64..100.0,
        high in 0.05f64..=1.0, lower_by in 0.0f64..=1.0,
        loads in prop::collection::vec(0.0f64..1000.0, 1..90), current in 1u32..40,
    ) {
        let low = (high * (1.0 - lower_by)).max(0.01);
        let with = |utilization| ScaleConfig {
            min: 1, max: 1000, metric, target, utilization, ..ScaleConfig::default()
        };
        let now = Duration::from_secs(1000);
        let s = samples(now, &loads);
        let (at_high, _) = decide(&with(high), &s, now, current, Duration::ZERO);
        let (at_low, _) = decide(&with(low), &s, now, current, Duration::ZERO);
        prop_assert!(at_low.desired >= at_high.desired, "{at_high:?} then {at_low:?}");
    }
}

/// The acceptance of issue 12 in numbers: a function without scaling labels taking 20
/// requests a second from clients that each have little in flight scales past one replica
/// within a few seconds, and back to one a stable window after the load ends.
#[test]
fn the_default_scales_a_fast_function_on_its_request_rate_and_back() {
    let c = ScaleConfig::default();
    assert_eq!(c.metric, Metric::Rps);
    let start = Duration::from_secs(1000);
    // A minute of nothing, then 20 req/s with 2 in flight at most.
    let mut s = steady(start, 60, 0.0, 0.0, 0.0);
    let (mut current, mut state, mut up_at) = (1, KpaState::default(), None);
    for i in 1..=30u32 {
        let now = start + SEC * i;
        s.push(Sample {
            at: now,
            concurrency: 2.0,
            requests: 20.0,
            cpu: 0.0,
        });
        let (d, next) = kpa::decide(&c, &s, now, current, Duration::ZERO, state);
        (current, state) = (d.desired, next);
        if current > 1 && up_at.is_none() {
            up_at = Some(i);
        }
        assert!(current <= 5, "20 req/s at 4.5 each wants 5: {d:?}");
    }
    let up_at = up_at.expect("never scaled up");
    assert!(up_at <= 5, "scaled up only after {up_at}s");
    assert_eq!(current, 5, "20 req/s at 4.5 each");
    // The load ends: nothing for a while.
    let end = start + SEC * 30;
    let mut down_at = None;
    for i in 1..=120u32 {
        let now = end + SEC * i;
        s.push(Sample {
            at: now,
            concurrency: 0.0,
            requests: 0.0,
            cpu: 0.0,
        });
        let (d, next) = kpa::decide(&c, &s, now, current, SEC * i, state);
        assert!(d.desired >= 1, "went below min: {d:?}");
        (current, state) = (d.desired, next);
        if current == 1 && down_at.is_none() {
            down_at = Some(i);
        }
    }
    let down_at = down_at.expect("never back to one");
    assert!(
        down_at <= 61,
        "back to one {down_at}s after the load ended, not within a stable window"
    );
    // The same load in flight terms (2 at once) would never have scaled under capacity.
    let capacity = ScaleConfig {
        metric: Metric::Concurrency,
        target: 50.0,
        ..ScaleConfig::default()
    };
    let now = start + SEC * 30;
    let busy = steady(now, 60, 20.0, 2.0, 0.0);
    assert_eq!(
        decide(&capacity, &busy, now, 1, Duration::ZERO).0.desired,
        1
    );
}

#[test]
fn steady_load_settles_at_load_over_target() {
    let c = config(1, 20, 10.0, false);
    let now = Duration::from_secs(100);
    let (d, _) = decide(&c, &samples(now, &[100.0; 60]), now, 10, Duration::ZERO);
    assert_eq!(d.desired, 10, "{d:?}");
    assert!(!d.panic);
}

#[test]
fn a_burst_panics_up_and_panic_holds_for_a_stable_window() {
    let c = config(1, 50, 10.0, false);
    // 59 quiet seconds, then 6 seconds of 200 in flight.
    let mut loads = vec![0.0; 54];
    loads.extend([200.0; 6]);
    let now = Duration::from_secs(100);
    let (d, state) = decide(&c, &samples(now, &loads), now, 1, Duration::ZERO);
    assert!(d.panic, "{d:?}");
    assert_eq!(d.desired, 20, "the panic window's 200 over 10 each: {d:?}");
    // The burst is over: the stable average alone would shrink, but panic holds the count.
    let later = now + Duration::from_secs(10);
    let mut calm = loads.clone();
    calm.extend([0.0; 10]);
    let (d2, state2) = kpa::decide(&c, &samples(later, &calm), later, 20, Duration::ZERO, state);
    assert!(d2.panic);
    assert_eq!(d2.desired, 20, "{d2:?}");
    // A stable window after the last panic, it scales down again, at most by half.
    let after = now + c.stable_window + SEC;
    let (d3, _) = kpa::decide(
        &c,
        &samples(after, &[0.0; 60]),
        after,
        20,
        Duration::ZERO,
        state2,
    );
    assert!(!d3.panic, "{d3:?}");
    assert_eq!(d3.desired, 10, "{d3:?}");
}

#[test]
fn scale_to_zero_only_when_allowed_and_idle_long_enough() {
    let now = Duration::from_secs(100);
    let quiet = samples(now, &[0.0; 60]);
    let allowed = config(1, 10, 10.0, true);
    let (d, _) = decide(&allowed, &quiet, now, 1, Duration::from_secs(4));
    assert_eq!(d.desired, 1, "idle 4s of 5s: {d:?}");
    let (d, _) = decide(&allowed, &quiet, now, 1, Duration::from_secs(5));
    assert_eq!(d.desired, 0, "{d:?}");
    assert!(d.reason.contains("idle"), "{d:?}");
    let forbidden = config(1, 10, 10.0, false);
    let (d, _) = decide(&forbidden, &quiet, now, 1, Duration::from_secs(3600));
    assert_eq!(d.desired, 1, "{d:?}");
    // A request in flight is never idle, whatever came before.
    let (d, _) = decide(&allowed, &quiet, now, 0, Duration::ZERO);
    assert_eq!(d.desired, 1, "{d:?}");
}

#[test]
fn rps_scales_on_request_rate() {
    let mut c = config(1, 20, 5.0, false);
    c.metric = kpa::Metric::Rps;
    let now = Duration::from_secs(100);
    let s: Vec<Sample> = samples(now, &[0.0; 60])
        .into_iter()
        .map(|s| Sample {
            requests: 20.0,
            ..s
        })
        .collect();
    let (d, _) = decide(&c, &s, now, 4, Duration::ZERO);
    assert_eq!(d.desired, 4, "{d:?}");
}

/// `cpu` divides the replicas' millicores by the target, whatever the requests: a function
/// busy with work of its own (no request in flight) scales all the same.
#[test]
fn cpu_scales_on_millicores() {
    let mut c = config(1, 20, 100.0, false);
    c.metric = kpa::Metric::Cpu;
    let now = Duration::from_secs(100);
    let s: Vec<Sample> = samples(now, &[0.0; 60])
        .into_iter()
        .map(|s| Sample { cpu: 450.0, ..s })
        .collect();
    let (d, _) = decide(&c, &s, now, 4, Duration::from_secs(60));
    assert_eq!(d.desired, 5, "{d:?}");
    assert!(d.reason.contains("millicores"), "{d:?}");
}

#[test]
fn labels_are_read_and_bad_ones_named() {
    let labels: BTreeMap<String, String> = [
        ("com.openfaas.scale.min", "2"),
        ("com.openfaas.scale.max", "8"),
        ("com.openfaas.scale.target", "10"),
        ("com.openfaas.scale.type", "rps"),
        ("com.openfaas.scale.target-proportion", "0.5"),
        ("com.openfaas.scale.zero", "true"),
        ("com.openfaas.scale.zero-duration", "5s"),
        ("com.sluice.scale.window", "20s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let scale = |labels: BTreeMap<String, String>| {
        sluice_core::FunctionConfig::from_deployment(&sluice_core::FunctionDeployment {
            labels: Some(labels),
            ..Default::default()
        })
        .map(|c| c.scale)
        .map_err(|e| e.to_string())
    };
    let c = scale(labels).unwrap();
    assert_eq!((c.min, c.max, c.target, c.utilization), (2, 8, 10.0, 0.5));
    assert_eq!(c.metric, kpa::Metric::Rps);
    assert!(c.zero);
    assert_eq!(c.zero_after, Duration::from_secs(5));
    assert_eq!(c.stable_window, Duration::from_secs(20));
    assert_eq!(c.panic_window, Duration::from_secs(2));

    let defaults = scale(BTreeMap::new()).unwrap();
    assert_eq!(defaults, ScaleConfig::default());

    for (key, value) in [
        ("com.openfaas.scale.target", "0"),
        ("com.openfaas.scale.type", "memory"),
        ("com.openfaas.scale.zero", "yes"),
        ("com.openfaas.scale.zero-duration", "soon"),
        ("com.openfaas.scale.target-proportion", "1.5"),
        ("com.openfaas.scale.zero-duration", "0s"),
    ] {
        let labels = BTreeMap::from([(key.to_owned(), value.to_owned())]);
        let err = scale(labels).unwrap_err();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn the_target_is_held_to_what_one_replica_is_sent() {
    let mut d = sluice_core::FunctionDeployment {
        service: "f".into(),
        labels: Some(BTreeMap::from([
            ("com.openfaas.scale.type".to_owned(), "capacity".to_owned()),
            ("com.openfaas.scale.target".to_owned(), "50".to_owned()),
        ])),
        ..Default::default()
    };
    let scale = |d: &sluice_core::FunctionDeployment| {
        sluice_core::FunctionConfig::from_deployment(d)
            .unwrap()
            .scale
    };
    assert_eq!(scale(&d).target, 50.0);
    d.env_vars.insert("max_inflight".into(), "4".into());
    assert_eq!(scale(&d).target, 4.0);
    d.labels
        .as_mut()
        .unwrap()
        .insert("com.sluice.concurrency".into(), "2".into());
    let c = ScaleConfig {
        utilization: 1.0,
        ..scale(&d)
    };
    assert_eq!(c.target, 2.0);
    // 20 in flight on replicas that take 2 each: 10 replicas, not 1.
    let now = Duration::from_secs(100);
    let (d, _) = decide(&c, &samples(now, &[20.0; 60]), now, 10, Duration::ZERO);
    assert_eq!(d.desired, 10, "{d:?}");
}
