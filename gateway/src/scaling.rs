//! The scaling history behind a portal's scaling chart: per function, a sample every
//! [`RESOLUTION`] over the last hour (replicas, available replicas, the most requests in flight
//! and held at once, requests started), kept in memory by the gateway, and
//! `GET /system/function/<name>/scaling`, which serves it.
//!
//! Memory is bounded by the number of functions, not by time or traffic: a function has at most
//! one ring of [`SAMPLES`] compact slots (12 bytes each, 8,640 bytes in all), written in place,
//! and none while its chart is one sample repeated (an idle function: the ring is made at its
//! first change and freed after an hour without one); a function the gateway no longer runs is
//! dropped at the next sample. Numbers too large for a slot are saturated.
//!
//! Nothing here is on the sync path. The sampler reads counters that are kept anyway: the
//! activator's per-function counts ([`sluice_activator::Activator::sample`], peaks since its
//! last look, so a burst between two samples still shows) and the orchestrator's replica
//! counts. In the cluster form each gateway keeps the history of its own requests: the load is
//! what this gateway sent (another gateway's requests are not in it); replicas are the shared
//! orchestrator's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sluice_core::FunctionRef;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiQuery};

/// Time between two samples of a function.
pub const RESOLUTION: Duration = Duration::from_secs(5);

/// Samples kept per function: one hour at [`RESOLUTION`].
pub const SAMPLES: usize = 720;

const RESOLUTION_MS: u64 = RESOLUTION.as_millis() as u64;

/// What the sampler read of one function at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Replicas the function should have.
    pub replicas: u32,
    /// Replicas ready for traffic.
    pub available_replicas: u32,
    /// The most requests in flight on its replicas at once during the interval.
    pub in_flight: u32,
    /// The most requests held at once during the interval, waiting for a replica with room.
    pub held: u32,
    /// Requests started during the interval.
    pub started: u32,
}

/// One point of a function's scaling chart: the interval of [`RESOLUTION`] that ends at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPoint {
    /// The end of the interval, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Replicas the function should have, at `at`.
    pub replicas: u32,
    /// Replicas ready for traffic, at `at`.
    pub available_replicas: u32,
    /// The most requests in flight on its replicas at once during the interval.
    pub in_flight: u32,
    /// The most requests held at once during the interval, waiting for a replica with room.
    pub held: u32,
    /// Requests started during the interval, per second.
    pub rps: f64,
}

/// The answer of `GET /system/function/<name>/scaling`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSeries {
    pub function: String,
    pub namespace: String,
    pub resolution_seconds: u64,
    /// Oldest first.
    pub points: Vec<ScalingPoint>,
}

/// One sample as kept: 12 bytes, so an hour of a function is 8,640 bytes. 65,535 replicas or
/// requests at once, or 4 billion requests in one interval, are more than a gateway sees;
/// beyond them the numbers saturate rather than wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    replicas: u16,
    available: u16,
    in_flight: u16,
    held: u16,
    started: u32,
}

/// A slot with no sample in it (never written, or an interval the sampler missed): not shown.
const GAP: Slot = Slot {
    replicas: 0,
    available: 0,
    in_flight: 0,
    held: 0,
    started: u32::MAX,
};

fn saturated(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Slot {
    fn of(sample: Sample) -> Self {
        Self {
            replicas: saturated(sample.replicas),
            available: saturated(sample.available_replicas),
            in_flight: saturated(sample.in_flight),
            held: saturated(sample.held),
            // `u32::MAX` is the gap's.
            started: sample.started.min(u32::MAX - 1),
        }
    }

    /// A second sample for the same interval (a sampler late enough to land twice in one):
    /// the peaks of both, the starts of both.
    fn merged(self, sample: Sample) -> Self {
        let other = Self::of(sample);
        Self {
            replicas: other.replicas,
            available: other.available,
            in_flight: self.in_flight.max(other.in_flight),
            held: self.held.max(other.held),
            started: self.started.saturating_add(other.started).min(u32::MAX - 1),
        }
    }
}

/// One function's samples: tick `t` lives in slot `t % SAMPLES`.
///
/// A function whose samples have all been the same for the whole window (an idle function, at
/// zero or at its minimum) keeps no slots: its chart is that one sample repeated. The slots are
/// allocated at its first change, and freed again once it has been steady for an hour.
#[derive(Debug)]
struct Ring {
    /// [`SAMPLES`] long; `None` while every sample in the window is `last`.
    slots: Option<Box<[Slot]>>,
    /// The newest sample.
    last: Slot,
    /// The tick of the newest sample.
    newest: u64,
    /// The tick of the first sample (there is nothing before it).
    first: u64,
    /// Every sample from this tick to `newest` is `last`, with no gap.
    steady_since: u64,
}

fn slot_of(tick: u64) -> usize {
    (tick % SAMPLES as u64) as usize
}

/// The oldest tick of the window that ends at `newest`.
fn window_start(newest: u64) -> u64 {
    newest.saturating_sub(SAMPLES as u64 - 1)
}

impl Ring {
    fn new(tick: u64, sample: Sample) -> Self {
        Self {
            slots: None,
            last: Slot::of(sample),
            newest: tick,
            first: tick,
            steady_since: tick,
        }
    }

    /// The slots, made from the steady sample if there are none.
    fn slots(&mut self) -> &mut [Slot] {
        let (first, newest, last) = (self.first, self.newest, self.last);
        self.slots.get_or_insert_with(|| {
            let mut slots = vec![GAP; SAMPLES].into_boxed_slice();
            for t in first.max(window_start(newest))..=newest {
                slots[slot_of(t)] = last;
            }
            slots
        })
    }

    fn put(&mut self, tick: u64, mut sample: Sample) {
        if tick < self.newest {
            return;
        }
        if tick == self.newest {
            let merged = self.last.merged(sample);
            if merged != self.last {
                self.slots()[slot_of(tick)] = merged;
                self.last = merged;
                self.steady_since = tick;
            }
            return;
        }
        // The activator's count covers every interval since the last sample: as a rate, it is
        // spread over them.
        let missed = tick - self.newest - 1;
        sample.started /= u32::try_from(missed + 1).unwrap_or(u32::MAX);
        let slot = Slot::of(sample);
        if missed > 0 || slot != self.last {
            let newest = self.newest;
            let slots = self.slots();
            // Intervals the sampler missed (a stalled runtime) hold nothing; their slots still
            // hold samples from an hour ago, which must not show as now.
            for t in (newest + 1).max(tick.saturating_sub(SAMPLES as u64))..tick {
                slots[slot_of(t)] = GAP;
            }
            self.steady_since = tick;
        }
        if let Some(slots) = &mut self.slots {
            slots[slot_of(tick)] = slot;
        }
        self.last = slot;
        self.newest = tick;
        // Steady for the whole window: the slots say nothing `last` does not.
        if self.slots.is_some() && self.steady_since <= window_start(tick) {
            self.slots = None;
        }
    }

    /// The sample at `tick` (within the window), `None` for a gap.
    fn at(&self, tick: u64) -> Option<Slot> {
        match &self.slots {
            None => Some(self.last),
            Some(slots) => Some(slots[slot_of(tick)]).filter(|s| *s != GAP),
        }
    }
}

/// Every function's samples over the last hour. Written by one sampler (see [`sample_every`]),
/// read by the API; a lock taken once per sample round and once per read, never per request.
#[derive(Debug)]
pub struct ScalingHistory {
    /// Tick `t` is at `origin + t × RESOLUTION`.
    origin: Instant,
    /// `origin` on the wall clock, in milliseconds since the Unix epoch.
    origin_unix_ms: u64,
    rings: Mutex<HashMap<FunctionRef, Ring>>,
}

impl Default for ScalingHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalingHistory {
    /// An empty history whose ticks count from now.
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            origin: Instant::now(),
            origin_unix_ms: u64::try_from(unix.as_millis()).unwrap_or(u64::MAX),
            rings: Mutex::default(),
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionRef, Ring>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tick `now` falls in (the last one at or before it).
    pub fn tick_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_millis();
        u64::try_from(elapsed / u128::from(RESOLUTION_MS)).unwrap_or(u64::MAX)
    }

    /// When tick `tick` is, in milliseconds since the Unix epoch.
    pub fn unix_ms(&self, tick: u64) -> u64 {
        self.origin_unix_ms
            .saturating_add(tick.saturating_mul(RESOLUTION_MS))
    }

    /// Records one round of samples, taken at `tick`: each function named gets its slot (its
    /// ring made if it has none), and every function not named is forgotten, its ring freed.
    pub fn record(&self, tick: u64, samples: Vec<(FunctionRef, Sample)>) {
        let mut rings = self.rings();
        for (function, sample) in samples {
            match rings.get_mut(&function) {
                Some(ring) => ring.put(tick, sample),
                None => {
                    rings.insert(function, Ring::new(tick, sample));
                }
            }
        }
        rings.retain(|_, ring| ring.newest >= tick);
    }

    /// How many functions have a history.
    pub fn len(&self) -> usize {
        self.rings().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `function`'s samples after `since` (milliseconds since the Unix epoch; all of the last
    /// hour without it), oldest first; `None` if it has no history.
    pub fn points(&self, function: &FunctionRef, since: Option<u64>) -> Option<Vec<ScalingPoint>> {
        let rings = self.rings();
        let ring = rings.get(function)?;
        let oldest = ring.first.max(window_start(ring.newest));
        let after = since.map_or(0, |ms| match ms.checked_sub(self.origin_unix_ms) {
            Some(ms) => ms / RESOLUTION_MS + 1,
            None => 0,
        });
        let from = oldest.max(after);
        // At most an hour's worth: `from` is within it.
        let len = ring.newest.saturating_add(1).saturating_sub(from);
        let mut points = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        for tick in from..=ring.newest {
            let Some(slot) = ring.at(tick) else {
                continue;
            };
            points.push(ScalingPoint {
                at: self.unix_ms(tick),
                replicas: u32::from(slot.replicas),
                available_replicas: u32::from(slot.available),
                in_flight: u32::from(slot.in_flight),
                held: u32::from(slot.held),
                rps: f64::from(slot.started) / RESOLUTION.as_secs_f64(),
            });
        }
        Some(points)
    }
}

/// Every [`RESOLUTION`] until `shutdown`, records what `read` says of every function (tokio's
/// clock, so tests run it on a paused one). An interval the runtime was too busy to sample is
/// left out, not made up.
pub(crate) async fn sample_every(
    history: &ScalingHistory,
    mut read: impl FnMut() -> Vec<(FunctionRef, Sample)>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(history.origin + RESOLUTION, RESOLUTION);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let tick = history.tick_at(Instant::now());
        history.record(tick, read());
    }
}

/// One round of samples: every function the orchestrator runs, its replicas now and what the
/// activator counted of its requests since the last round.
pub(crate) fn read(state: &AppState) -> Vec<(FunctionRef, Sample)> {
    state
        .orchestrator
        .functions()
        .into_iter()
        .map(|function| {
            let replicas = state.orchestrator.replicas(&function).unwrap_or_default();
            let load = state.activator.sample(&function);
            let sample = Sample {
                replicas: replicas.desired,
                available_replicas: replicas.ready,
                in_flight: load.in_flight,
                held: load.held,
                started: load.started,
            };
            (function, sample)
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub(crate) struct ScalingQuery {
    namespace: Option<String>,
    /// Only points after this, in milliseconds since the Unix epoch (the last `at` a client
    /// has), for live updates.
    since: Option<u64>,
}

/// `GET /system/function/<name>/scaling?namespace=&since=`: the function's scaling chart; `404`
/// for a function this gateway does not run.
pub(crate) async fn chart(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ScalingQuery>,
) -> Result<Json<ScalingSeries>, ApiError> {
    let function = FunctionRef::parse(&name, q.namespace.as_deref())?;
    let points = state
        .scaling(&function, q.since)
        .ok_or_else(|| ApiError::FunctionNotFound(function.to_string()))?;
    Ok(Json(ScalingSeries {
        function: function.name,
        namespace: function.namespace,
        resolution_seconds: RESOLUTION.as_secs(),
        points,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sluice_activator::{Activator, ActivatorConfig};
    use sluice_core::{
        Autoscaler, EndpointSource, ReadyReplica, ReadySet, ReplicaLoad, ScaleStatus, ScalingGuard,
        Tracked,
    };
    use tokio::sync::watch;

    use super::*;

    fn function(name: &str) -> FunctionRef {
        FunctionRef::parse(name, None).unwrap()
    }

    /// The sampler on its own task, reading what the test sets in `now`; returns half an
    /// interval in, so the test never looks at the instant of a sample.
    async fn sampler(
        now: Arc<Mutex<Vec<(FunctionRef, Sample)>>>,
    ) -> (Arc<ScalingHistory>, CancellationToken) {
        let history = Arc::new(ScalingHistory::new());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (history, stop) = (history.clone(), stop.clone());
            async move {
                sample_every(&history, || now.lock().unwrap().clone(), stop).await;
            }
        });
        tokio::time::sleep(RESOLUTION / 2).await;
        (history, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn samples_land_every_five_seconds_and_since_gives_only_newer_ones() {
        let f = function("f");
        let sample = Sample {
            replicas: 2,
            available_replicas: 1,
            in_flight: 7,
            held: 3,
            started: 10,
        };
        let now = Arc::new(Mutex::new(vec![(f.clone(), sample)]));
        let (history, _stop) = sampler(now.clone()).await;
        assert_eq!(history.points(&f, None), None, "no sample before 5 s");
        tokio::time::sleep(RESOLUTION).await;
        let points = history.points(&f, None).unwrap();
        assert_eq!(
            points,
            vec![ScalingPoint {
                at: history.origin_unix_ms + 5_000,
                replicas: 2,
                available_replicas: 1,
                in_flight: 7,
                held: 3,
                rps: 2.0,
            }]
        );
        now.lock().unwrap()[0].1 = Sample {
            replicas: 3,
            ..Sample::default()
        };
        tokio::time::sleep(RESOLUTION).await;
        let points = history.points(&f, None).unwrap();
        let at: Vec<u64> = points
            .iter()
            .map(|p| p.at - history.origin_unix_ms)
            .collect();
        assert_eq!(at, [5_000, 10_000]);
        assert_eq!((points[1].replicas, points[1].rps), (3, 0.0));
        // Live updates: only what came after the last point a client has.
        let newer = history.points(&f, Some(points[0].at)).unwrap();
        assert_eq!(newer, points[1..]);
        assert_eq!(history.points(&f, Some(points[1].at)).unwrap(), []);
        assert_eq!(history.points(&f, Some(0)).unwrap(), points);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_keeps_the_last_hour_and_wraps_in_place() {
        let f = function("f");
        let now = Arc::new(Mutex::new(vec![(f.clone(), Sample::default())]));
        let (history, _stop) = sampler(now.clone()).await;
        // Each tick's sample says which tick it was (in `held`), for 70 minutes.
        for tick in 1..=840u32 {
            now.lock().unwrap()[0].1.held = tick;
            tokio::time::sleep(RESOLUTION).await;
        }
        let points = history.points(&f, None).unwrap();
        assert_eq!(points.len(), SAMPLES, "one hour, no more");
        let held: Vec<u32> = points.iter().map(|p| p.held).collect();
        assert_eq!(held, (121..=840).collect::<Vec<_>>(), "oldest first");
        for pair in points.windows(2) {
            assert_eq!(pair[1].at - pair[0].at, 5_000);
        }
        assert_eq!(points[719].at, history.origin_unix_ms + 840 * 5_000);
    }

    #[test]
    fn missed_intervals_show_as_gaps_never_as_samples_from_an_hour_ago() {
        let history = ScalingHistory::new();
        let f = function("f");
        let at = |tick: u64, started: u32| {
            history.record(
                tick,
                vec![(
                    f.clone(),
                    Sample {
                        started,
                        in_flight: u32::try_from(tick).unwrap(),
                        ..Sample::default()
                    },
                )],
            )
        };
        for tick in 1..=720 {
            at(tick, 5);
        }
        // Three intervals missed: the count read after them is spread over all four.
        at(724, 40);
        let points = history.points(&f, None).unwrap();
        assert_eq!(
            points.len(),
            717,
            "721–723 missed; 1–4 are over an hour old"
        );
        let last = points.last().unwrap();
        assert_eq!((last.in_flight, last.rps), (724, 2.0));
        assert_eq!(points[points.len() - 2].in_flight, 720);
        // A whole hour missed: nothing old is left.
        at(2_000, 0);
        assert_eq!(history.points(&f, None).unwrap().len(), 1);
        // Two samples in one interval: the peaks and the starts of both.
        history.record(
            2_000,
            vec![(
                f.clone(),
                Sample {
                    in_flight: 9,
                    started: 5,
                    ..Sample::default()
                },
            )],
        );
        let points = history.points(&f, None).unwrap();
        assert_eq!((points[0].in_flight, points[0].rps), (2_000, 1.0));
    }

    /// The ring against the plainest model of it: every tick's sample in a map, gaps and all.
    /// Long steady runs (where the ring keeps no slots), changes, missed intervals and second
    /// samples of one interval, in a fixed pseudo-random order.
    #[test]
    fn the_ring_shows_what_a_plain_list_of_every_sample_would() {
        let history = ScalingHistory::new();
        let f = function("f");
        let mut model: std::collections::BTreeMap<u64, Option<Slot>> = Default::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut sample = Sample::default();
        let (mut tick, mut freed) = (1, 0);
        for step in 0..20_000 {
            // Busy and idle stretches in turn; idle ones are longer than the window.
            if (step / 1_500) % 2 == 1 {
                sample = Sample {
                    replicas: 1,
                    available_replicas: 1,
                    ..Sample::default()
                };
                tick += u64::from(random(50) != 0);
            } else {
                match random(100) {
                    // Mostly the same again, as an idle function is.
                    0..=84 => tick += 1,
                    85..=93 => {
                        sample.replicas = u32::try_from(random(3)).unwrap();
                        sample.in_flight = u32::try_from(random(4)).unwrap();
                        sample.started = u32::try_from(random(3) * 10).unwrap();
                        tick += 1;
                    }
                    // Missed intervals, sometimes more than an hour of them.
                    94..=97 => {
                        let long = random(4) == 0;
                        tick += 2 + random(if long { 900 } else { 5 });
                    }
                    // A second sample of the same interval.
                    _ => {}
                }
            }
            history.record(tick, vec![(f.clone(), sample)]);
            let newest = *model.keys().next_back().unwrap_or(&0);
            if model.is_empty() {
                model.insert(tick, Some(Slot::of(sample)));
            } else if tick == newest {
                let merged = model[&tick].unwrap().merged(sample);
                model.insert(tick, Some(merged));
            } else {
                let missed = tick - newest - 1;
                for t in newest + 1..tick {
                    model.insert(t, None);
                }
                let mut spread = sample;
                spread.started /= u32::try_from(missed + 1).unwrap();
                model.insert(tick, Some(Slot::of(spread)));
            }
            let expected: Vec<(u64, Slot)> = model
                .range(window_start(tick)..)
                .filter_map(|(t, slot)| Some((history.unix_ms(*t), (*slot)?)))
                .collect();
            let got: Vec<(u64, Slot)> = history
                .points(&f, None)
                .unwrap()
                .into_iter()
                .map(|p| {
                    let slot = Slot::of(Sample {
                        replicas: p.replicas,
                        available_replicas: p.available_replicas,
                        in_flight: p.in_flight,
                        held: p.held,
                        started: (p.rps * RESOLUTION.as_secs_f64()).round() as u32,
                    });
                    (p.at, slot)
                })
                .collect();
            assert_eq!(got, expected, "step {step}, tick {tick}");
            if history.rings()[&f].slots.is_none() {
                freed += 1;
            }
        }
        assert!(freed > 3_000, "steady hours keep no slots: {freed}");
    }

    #[test]
    fn numbers_too_large_for_a_slot_saturate() {
        let history = ScalingHistory::new();
        let f = function("f");
        history.record(
            1,
            vec![(
                f.clone(),
                Sample {
                    replicas: 70_000,
                    available_replicas: 1,
                    in_flight: u32::MAX,
                    held: 65_535,
                    started: u32::MAX,
                },
            )],
        );
        let p = history.points(&f, None).unwrap()[0];
        assert_eq!(
            (p.replicas, p.available_replicas, p.in_flight, p.held),
            (65_535, 1, 65_535, 65_535)
        );
        assert_eq!(
            p.rps,
            f64::from(u32::MAX - 1) / 5.0,
            "shown, not taken for a gap"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_function_no_longer_sampled_has_its_history_dropped() {
        let (a, b) = (function("a"), function("b"));
        let now = Arc::new(Mutex::new(vec![
            (a.clone(), Sample::default()),
            (b.clone(), Sample::default()),
        ]));
        let (history, stop) = sampler(now.clone()).await;
        tokio::time::sleep(RESOLUTION * 3).await;
        assert_eq!(history.len(), 2);
        assert_eq!(history.points(&b, None).unwrap().len(), 3);
        now.lock().unwrap().truncate(1);
        tokio::time::sleep(RESOLUTION).await;
        assert_eq!(history.points(&b, None), None, "removed: its ring is freed");
        assert_eq!(history.points(&a, None).unwrap().len(), 4);
        assert_eq!(history.len(), 1);
        // Back again: a new history, from now.
        now.lock().unwrap().push((b.clone(), Sample::default()));
        tokio::time::sleep(RESOLUTION).await;
        assert_eq!(history.points(&b, None).unwrap().len(), 1);
        // Stopped by its token: no more samples.
        stop.cancel();
        tokio::time::sleep(RESOLUTION * 2).await;
        assert_eq!(history.points(&a, None).unwrap().len(), 5);
    }

    /// One replica, always ready, that takes any number of requests.
    #[derive(Debug)]
    struct OneReplica(ReadyReplica, watch::Sender<u64>);

    impl EndpointSource for OneReplica {
        fn ready(&self, _: &FunctionRef) -> Option<ReadySet> {
            Some(ReadySet {
                desired: 1,
                ready: vec![self.0.clone()],
                crash_loop: None,
            })
        }
        fn changes(&self, _: &FunctionRef) -> Option<watch::Receiver<u64>> {
            Some(self.1.subscribe())
        }
    }

    #[derive(Debug)]
    struct NoScaling;

    #[async_trait::async_trait]
    impl Autoscaler for NoScaling {
        fn track(&self, _: &FunctionRef) -> Tracked {
            Tracked::new(())
        }
        async fn wake(&self, _: &FunctionRef) -> bool {
            false
        }
        async fn exclusive(&self) -> ScalingGuard {
            Box::new(())
        }
        fn pin(&self, _: &FunctionRef, _: u32, _: &str) {}
        fn status(&self, _: &FunctionRef) -> Option<ScaleStatus> {
            None
        }
    }

    /// A burst that starts and ends between two samples still shows: the activator keeps the
    /// peak until the sampler reads it.
    #[tokio::test(start_paused = true)]
    async fn a_burst_between_two_samples_shows_as_its_peak_and_its_rate() {
        let replica = ReadyReplica {
            url: "http://127.0.0.1:1".into(),
            load: Arc::new(ReplicaLoad::default()),
        };
        let activator = Activator::new(
            Arc::new(OneReplica(replica, watch::channel(0).0)),
            Arc::new(NoScaling),
            ActivatorConfig::default(),
        );
        let f = function("f");
        let history = Arc::new(ScalingHistory::new());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (history, activator, f, stop) =
                (history.clone(), activator.clone(), f.clone(), stop.clone());
            async move {
                let read = || {
                    let load = activator.sample(&f);
                    vec![(
                        f.clone(),
                        Sample {
                            replicas: 1,
                            available_replicas: 1,
                            in_flight: load.in_flight,
                            held: load.held,
                            started: load.started,
                        },
                    )]
                };
                sample_every(&history, read, stop).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Ten at once, over a second later, then five one after another.
        let burst: Vec<_> =
            futures_util::future::join_all((0..10).map(|_| activator.endpoint(&f, None))).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(burst);
        for _ in 0..5 {
            drop(activator.endpoint(&f, None).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let points = history.points(&f, None).unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(
            (points[0].in_flight, points[0].held, points[0].rps),
            (10, 0, 3.0),
            "the peak of the burst, 15 requests in 5 s"
        );
        tokio::time::sleep(RESOLUTION).await;
        let points = history.points(&f, None).unwrap();
        assert_eq!((points[1].in_flight, points[1].rps), (0, 0.0), "quiet");
        stop.cancel();
    }
}
