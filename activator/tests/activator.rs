//! The activator against a scripted endpoint source and autoscaler: which replica each request
//! gets, when requests are held and let through, and what wakes a function at zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_activator::{Activator, ActivatorConfig, ActivatorError, LoadSample};
use sluice_core::{
    Autoscaler, CrashLoop, EndpointSource, FunctionRef, ReadyReplica, ReadySet, ReplicaLoad,
    ScaleStatus, ScalingGuard, Tracked,
};
use tokio::sync::watch;

/// Replicas set by the test, per function.
#[derive(Debug, Default)]
struct Source {
    sets: Mutex<HashMap<FunctionRef, ReadySet>>,
    changes: Mutex<HashMap<FunctionRef, watch::Sender<u64>>>,
}

impl Source {
    fn set(&self, function: &FunctionRef, set: Option<ReadySet>) {
        let mut sets = self.sets.lock().unwrap();
        match set {
            Some(set) => {
                sets.insert(function.clone(), set);
            }
            None => {
                sets.remove(function);
            }
        }
        self.changes
            .lock()
            .unwrap()
            .entry(function.clone())
            .or_insert_with(|| watch::channel(0).0)
            .send_modify(|n| *n += 1);
    }
}

impl EndpointSource for Source {
    fn ready(&self, function: &FunctionRef) -> Option<ReadySet> {
        self.sets.lock().unwrap().get(function).cloned()
    }

    fn changes(&self, function: &FunctionRef) -> Option<watch::Receiver<u64>> {
        self.sets.lock().unwrap().get(function)?;
        Some(
            self.changes
                .lock()
                .unwrap()
                .entry(function.clone())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }
}

/// Counts wake-ups; a wake-up brings one replica up at once when `replica` is set.
#[derive(Debug)]
struct Waker {
    wakes: AtomicU32,
    source: Arc<Source>,
    replica: Option<ReadyReplica>,
}

#[async_trait::async_trait]
impl Autoscaler for Waker {
    fn track(&self, _: &FunctionRef) -> Tracked {
        Tracked::new(())
    }
    async fn wake(&self, function: &FunctionRef) -> bool {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        match &self.replica {
            Some(r) => {
                self.source.set(
                    function,
                    Some(ReadySet {
                        desired: 1,
                        ready: vec![r.clone()],
                        crash_loop: None,
                    }),
                );
                true
            }
            None => false,
        }
    }
    async fn exclusive(&self) -> ScalingGuard {
        Box::new(())
    }
    fn pin(&self, _: &FunctionRef, _: u32, _: &str) {}
    fn status(&self, _: &FunctionRef) -> Option<ScaleStatus> {
        None
    }
}

fn replica(port: u16) -> ReadyReplica {
    ReadyReplica {
        url: format!("http://10.0.0.1:{port}").into(),
        load: Arc::new(ReplicaLoad::default()),
    }
}

fn f() -> FunctionRef {
    FunctionRef::parse("f", None).unwrap()
}

fn setup(wake_to: Option<ReadyReplica>, buffer: usize) -> (Activator, Arc<Source>, Arc<Waker>) {
    let source = Arc::new(Source::default());
    let waker = Arc::new(Waker {
        wakes: AtomicU32::new(0),
        source: source.clone(),
        replica: wake_to,
    });
    let activator = Activator::new(
        source.clone(),
        waker.clone(),
        ActivatorConfig {
            buffer,
            hold_timeout: Duration::from_secs(5),
        },
    );
    (activator, source, waker)
}

#[tokio::test(start_paused = true)]
async fn the_least_busy_replica_with_room_gets_the_request() {
    let (activator, source, _) = setup(None, 10);
    let (a, b) = (replica(1), replica(2));
    source.set(
        &f(),
        Some(ReadySet {
            desired: 2,
            ready: vec![a.clone(), b.clone()],
            crash_loop: None,
        }),
    );
    let first = activator.endpoint(&f(), Some(2)).await.unwrap();
    let second = activator.endpoint(&f(), Some(2)).await.unwrap();
    assert_ne!(first.url, second.url, "equally busy: round-robin");
    let third = activator.endpoint(&f(), Some(2)).await.unwrap();
    let fourth = activator.endpoint(&f(), Some(2)).await.unwrap();
    assert_eq!((a.load.in_flight(), b.load.in_flight()), (2, 2));
    drop((third, fourth));
    assert_eq!((a.load.in_flight(), b.load.in_flight()), (1, 1));
    drop(first);
    let busy = if second.url == a.url { &a } else { &b };
    let idle = if second.url == a.url { &b } else { &a };
    let next = activator.endpoint(&f(), Some(2)).await.unwrap();
    assert_eq!(next.url, idle.url, "the idle replica, not the busy one");
    assert_eq!(busy.load.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_function_holds_requests_until_a_slot_frees() {
    let (activator, source, waker) = setup(None, 10);
    let a = replica(1);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 1,
            ready: vec![a.clone()],
            crash_loop: None,
        }),
    );
    let busy = activator.endpoint(&f(), Some(1)).await.unwrap();
    let held = tokio::spawn({
        let activator = activator.clone();
        async move { activator.endpoint(&f(), Some(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(activator.held(&f()), 1);
    assert!(!held.is_finished());
    assert_eq!(
        a.load.in_flight(),
        1,
        "never above the replica's concurrency"
    );
    drop(busy);
    let got = held.await.unwrap().unwrap();
    assert_eq!(got.url, a.url);
    assert_eq!(activator.held(&f()), 0);
    assert_eq!(
        waker.wakes.load(Ordering::SeqCst),
        0,
        "not at zero: no wake"
    );
}

#[tokio::test(start_paused = true)]
async fn holding_is_bounded_in_number_and_time() {
    let (activator, source, _) = setup(None, 1);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 1,
            ready: vec![],
            crash_loop: None,
        }),
    );
    let first = tokio::spawn({
        let activator = activator.clone();
        async move { activator.endpoint(&f(), None).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(matches!(
        activator.endpoint(&f(), None).await,
        Err(ActivatorError::Full { limit: 1, .. })
    ));
    assert!(matches!(
        first.await.unwrap(),
        Err(ActivatorError::NotReady { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_function_at_zero_is_woken_once_and_served() {
    let a = replica(7);
    let (activator, source, waker) = setup(Some(a.clone()), 10);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 0,
            ready: vec![],
            crash_loop: None,
        }),
    );
    let got = activator.endpoint(&f(), None).await.unwrap();
    assert_eq!(got.url, a.url);
    assert_eq!(waker.wakes.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_function_that_cannot_be_woken_is_refused_without_spinning() {
    let (activator, source, waker) = setup(None, 10);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 0,
            ready: vec![],
            crash_loop: None,
        }),
    );
    assert!(matches!(
        activator.endpoint(&f(), None).await,
        Err(ActivatorError::ScaledToZero(_))
    ));
    assert_eq!(waker.wakes.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_closed_replica_gets_nothing_and_a_removed_function_is_gone() {
    let (activator, source, _) = setup(None, 10);
    let (a, b) = (replica(1), replica(2));
    a.load.close();
    source.set(
        &f(),
        Some(ReadySet {
            desired: 1,
            ready: vec![a.clone(), b.clone()],
            crash_loop: None,
        }),
    );
    for _ in 0..4 {
        assert_eq!(activator.endpoint(&f(), None).await.unwrap().url, b.url);
    }
    let held = tokio::spawn({
        let activator = activator.clone();
        source.set(
            &f(),
            Some(ReadySet {
                desired: 1,
                ready: vec![],
                crash_loop: None,
            }),
        );
        async move { activator.endpoint(&f(), None).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    source.set(&f(), None);
    assert!(matches!(held.await.unwrap(), Err(ActivatorError::Gone(_))));
    assert!(matches!(
        activator.endpoint(&f(), None).await,
        Err(ActivatorError::Gone(_))
    ));
}

#[tokio::test]
async fn a_drained_replica_is_told_when_its_last_request_ends() {
    let load = Arc::new(ReplicaLoad::default());
    let request = load.begin(usize::MAX).unwrap();
    load.close();
    assert!(load.begin(usize::MAX).is_none(), "closed: no new requests");
    let drained = tokio::spawn({
        let load = load.clone();
        async move { load.drained().await }
    });
    tokio::task::yield_now().await;
    assert!(!drained.is_finished());
    drop(request);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained once idle")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_function_fails_at_once_and_lets_its_held_requests_go() {
    let (activator, source, _) = setup(None, 10);
    let starting = ReadySet {
        desired: 1,
        ready: vec![],
        crash_loop: None,
    };
    source.set(&f(), Some(starting.clone()));
    // Held while its replica starts...
    let held = tokio::spawn({
        let activator = activator.clone();
        async move { activator.endpoint(&f(), None).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(activator.held(&f()), 1);
    // ...and let go, well before the hold timeout, once the replica is seen crash-looping.
    let crash_loop = Arc::new(CrashLoop::new(
        "exited with status 3".into(),
        3,
        ["boom".to_owned()],
    ));
    let looping = ReadySet {
        crash_loop: Some(crash_loop.clone()),
        ..starting
    };
    source.set(&f(), Some(looping.clone()));
    let started = tokio::time::Instant::now();
    let err = held.await.unwrap().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        err,
        ActivatorError::CrashLooping {
            function: f().to_string(),
            crash_loop: crash_loop.clone(),
        }
    );
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    // A new request is not held at all.
    let started = tokio::time::Instant::now();
    assert!(matches!(
        activator.endpoint(&f(), None).await,
        Err(ActivatorError::CrashLooping { .. })
    ));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(activator.crash_loop(&f()), Some(crash_loop));
    // A replica that is ready (an earlier one, or one that came up) serves all the same.
    let r = replica(1);
    source.set(
        &f(),
        Some(ReadySet {
            ready: vec![r.clone()],
            ..looping
        }),
    );
    assert_eq!(activator.endpoint(&f(), None).await.unwrap().url, r.url);
}

/// What the gateway's scaling chart reads: requests started, and the most in flight and held at
/// once between two samples, however short-lived.
#[tokio::test(start_paused = true)]
async fn a_sample_counts_starts_and_keeps_the_peaks_seen_since_the_last() {
    let (activator, source, _) = setup(None, 10);
    let a = replica(1);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 1,
            ready: vec![a.clone()],
            crash_loop: None,
        }),
    );
    assert_eq!(
        activator.sample(&f()),
        LoadSample::default(),
        "no request yet"
    );
    // Three in flight at once (the replica's limit), a fourth held.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(activator.endpoint(&f(), Some(3)).await.unwrap());
    }
    let held = tokio::spawn({
        let activator = activator.clone();
        async move { activator.endpoint(&f(), Some(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(activator.held(&f()), 1);
    // Two end before anyone looks; the held one takes a slot.
    busy.truncate(1);
    let fourth = held.await.unwrap().unwrap();
    assert_eq!(a.load.in_flight(), 2);
    assert_eq!(
        activator.sample(&f()),
        LoadSample {
            started: 4,
            in_flight: 3,
            held: 1,
        },
        "the peaks, not what is left at the look"
    );
    // Nothing new: what is in flight now is the peak, nothing started.
    assert_eq!(
        activator.sample(&f()),
        LoadSample {
            started: 0,
            in_flight: 2,
            held: 0,
        }
    );
    drop((busy, fourth));
    assert_eq!(
        activator.sample(&f()).in_flight,
        2,
        "in flight at the start"
    );
    assert_eq!(activator.sample(&f()), LoadSample::default());
    // A request refused at once (a full buffer) did not start.
    let (activator, source, _) = setup(None, 0);
    source.set(
        &f(),
        Some(ReadySet {
            desired: 1,
            ready: vec![],
            crash_loop: None,
        }),
    );
    assert!(matches!(
        activator.endpoint(&f(), None).await,
        Err(ActivatorError::Full { .. })
    ));
    assert_eq!(activator.sample(&f()), LoadSample::default());
}
