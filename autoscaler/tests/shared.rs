//! One autoscaler for many gateways, over a real `nats-server`: two gateways report their load,
//! the leader decides for both, a request held at zero wakes its function at once, and only the
//! leader scales.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_autoscaler::AutoscalerConfig;
use sluice_autoscaler::shared::{LoadReporter, SharedAutoscaler};
use sluice_core::{
    Autoscaler, FunctionDeployment, FunctionRef, FunctionSpec, FunctionStore, LogStream,
    Orchestrator, ProviderError, Replicas, Timestamp,
};
use sluice_store::SqliteStore;
use sluice_testkit::NatsServer;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(200);
/// These tests hold requests in flight: they scale on that (the default is the request rate).
const CAPACITY: (&str, &str) = ("com.openfaas.scale.type", "capacity");
/// Aimed at the whole target, so the counts below are load over target.
const EXACT: (&str, &str) = ("com.openfaas.scale.target-proportion", "1");

/// An orchestrator that records every scale, with when it happened.
#[derive(Debug, Default)]
struct Recorder {
    replicas: Mutex<HashMap<FunctionRef, u32>>,
    scaled: Mutex<Vec<(FunctionRef, u32, Instant)>>,
}

impl Recorder {
    fn with(functions: &[(&FunctionRef, u32)]) -> Arc<Self> {
        let r = Self::default();
        for (f, n) in functions {
            r.replicas.lock().unwrap().insert((*f).clone(), *n);
        }
        Arc::new(r)
    }

    fn current(&self, f: &FunctionRef) -> u32 {
        self.replicas.lock().unwrap()[f]
    }

    fn scales_of(&self, f: &FunctionRef) -> Vec<(u32, Instant)> {
        self.scaled
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, _, _)| g == f)
            .map(|(_, n, at)| (*n, *at))
            .collect()
    }
}

#[async_trait]
impl Orchestrator for Recorder {
    fn validate(&self, _: &FunctionSpec) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        self.replicas
            .lock()
            .unwrap()
            .insert(spec.function.clone(), spec.replicas);
        Ok(())
    }
    async fn remove(&self, f: &FunctionRef) -> Result<(), ProviderError> {
        self.replicas.lock().unwrap().remove(f);
        Ok(())
    }
    async fn scale(&self, f: &FunctionRef, n: u32) -> Result<(), ProviderError> {
        self.scaled
            .lock()
            .unwrap()
            .push((f.clone(), n, Instant::now()));
        self.replicas.lock().unwrap().insert(f.clone(), n);
        Ok(())
    }
    fn replicas(&self, f: &FunctionRef) -> Option<Replicas> {
        let n = *self.replicas.lock().unwrap().get(f)?;
        Some(Replicas {
            desired: n,
            ready: n,
        })
    }
    fn functions(&self) -> Vec<FunctionRef> {
        self.replicas.lock().unwrap().keys().cloned().collect()
    }
    fn logs(&self, f: &FunctionRef, _: usize, _: bool) -> Result<LogStream, ProviderError> {
        Err(ProviderError::NotFound(f.to_string()))
    }
}

struct Platform {
    _nats: NatsServer,
    url: String,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Platform {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let pool = sluice_store::open_sqlite(&dir.path().join("sluice.db"))
            .await
            .unwrap();
        Self {
            url: nats.url(),
            _nats: nats,
            store: Arc::new(SqliteStore::new(pool)),
            _dir: dir,
            stop: CancellationToken::new(),
        }
    }

    async fn deploy(&self, name: &str, labels: &[(&str, &str)]) -> FunctionRef {
        let f = FunctionRef::parse(name, None).unwrap();
        let deployment = FunctionDeployment {
            service: name.into(),
            image: "example/fn".into(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        let spec = FunctionSpec::new(f.clone(), deployment, 1, Timestamp::now()).unwrap();
        FunctionStore::create(self.store.as_ref(), &spec)
            .await
            .unwrap();
        f
    }

    async fn gateway(&self, name: &str) -> LoadReporter {
        let nats = async_nats::connect(&self.url).await.unwrap();
        let reporter = LoadReporter::new(nats, name, TICK);
        tokio::spawn(reporter.clone().run(self.stop.clone()));
        reporter
    }

    async fn autoscaler(
        &self,
        orchestrator: Arc<Recorder>,
        leading: watch::Receiver<bool>,
    ) -> SharedAutoscaler {
        let nats = async_nats::connect(&self.url).await.unwrap();
        let autoscaler = SharedAutoscaler::new(
            nats,
            orchestrator,
            self.store.clone(),
            AutoscalerConfig {
                tick: TICK,
                max_replicas_limit: 64,
                ..AutoscalerConfig::default()
            },
            leading,
        );
        tokio::spawn(autoscaler.clone().run(self.stop.clone()));
        autoscaler
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_gateways_load_one_autoscaler_decides() {
    let p = Platform::start().await;
    let f = p
        .deploy(
            "echo",
            &[CAPACITY, EXACT, ("com.openfaas.scale.target", "10")],
        )
        .await;
    let orchestrator = Recorder::with(&[(&f, 1)]);
    let (_leading, leads) = watch::channel(true);
    p.autoscaler(orchestrator.clone(), leads).await;
    let (a, b) = (p.gateway("gateway-a").await, p.gateway("gateway-b").await);

    // 100 requests in flight across the two gateways, 10 a replica: 10 replicas.
    let held: Vec<_> = (0..50).flat_map(|_| [a.track(&f), b.track(&f)]).collect();
    eventually("10 ± 1 replicas", || {
        (9..=11).contains(&orchestrator.current(&f))
    })
    .await;
    // Settled there: no further scale while the load holds.
    tokio::time::sleep(TICK * 5).await;
    let n = orchestrator.current(&f);
    assert!(
        (9..=11).contains(&n),
        "{n} replicas for 100 in flight at 10 each"
    );
    // The gateways hear the leader's decision.
    eventually("the decision at the gateways", || {
        a.status(&f).is_some_and(|s| (9..=11).contains(&s.target))
            && b.status(&f).is_some_and(|s| (9..=11).contains(&s.target))
    })
    .await;
    drop(held);
}

#[tokio::test]
async fn a_request_held_at_zero_scales_its_function_within_100ms() {
    let p = Platform::start().await;
    let f = p
        .deploy("sleepy", &[("com.openfaas.scale.zero", "true")])
        .await;
    let orchestrator = Recorder::with(&[(&f, 0)]);
    let (_leading, leads) = watch::channel(true);
    p.autoscaler(orchestrator.clone(), leads).await;
    let gateway = p.gateway("gateway-a").await;
    // The leader has decided at least once (and so listens): a function at zero with no load
    // stays there.
    eventually("the leader's first decision", || {
        gateway.status(&f).is_some()
    })
    .await;
    assert_eq!(orchestrator.current(&f), 0);
    assert!(orchestrator.scales_of(&f).is_empty());

    let _request = gateway.track(&f);
    let arrived = Instant::now();
    assert!(gateway.wake(&f).await);
    eventually("the scale to 1", || !orchestrator.scales_of(&f).is_empty()).await;
    let (n, at) = orchestrator.scales_of(&f)[0];
    assert_eq!(n, 1);
    let took = at.duration_since(arrived);
    assert!(
        took < Duration::from_millis(100),
        "scaled from zero {took:?} after the request arrived"
    );
}

#[tokio::test]
async fn only_the_leader_scales_and_a_standby_takes_over() {
    let p = Platform::start().await;
    let f = p
        .deploy(
            "echo",
            &[CAPACITY, EXACT, ("com.openfaas.scale.target", "5")],
        )
        .await;
    let (first, second) = (Recorder::with(&[(&f, 1)]), Recorder::with(&[(&f, 1)]));
    let (lead_first, leads) = watch::channel(true);
    p.autoscaler(first.clone(), leads).await;
    let (lead_second, leads) = watch::channel(false);
    p.autoscaler(second.clone(), leads).await;
    let gateway = p.gateway("gateway-a").await;

    let mut held: Vec<_> = (0..20).map(|_| gateway.track(&f)).collect();
    eventually("the leader scales to 4", || first.current(&f) == 4).await;
    assert!(second.scales_of(&f).is_empty(), "the standby scaled");

    // The leader steps down; the standby, which heard the same reports, takes over.
    lead_first.send(false).unwrap();
    lead_second.send(true).unwrap();
    let before = first.scales_of(&f).len();
    held.extend((0..20).map(|_| gateway.track(&f)));
    eventually("the new leader scales to 8", || second.current(&f) == 8).await;
    assert_eq!(
        first.scales_of(&f).len(),
        before,
        "the old leader still scaled"
    );
}

#[tokio::test]
async fn a_standby_taking_over_scales_a_request_rate_from_the_rate_not_the_total() {
    let p = Platform::start().await;
    let f = p
        .deploy(
            "rated",
            &[
                ("com.openfaas.scale.type", "rps"),
                ("com.openfaas.scale.target", "10"),
            ],
        )
        .await;
    let orchestrator = Recorder::with(&[(&f, 1)]);
    let (lead, leads) = watch::channel(false);
    p.autoscaler(orchestrator.clone(), leads).await;
    let gateway = p.gateway("gateway-a").await;

    // About 100 requests a second, heard by the standby for a while before it leads.
    let load = tokio::spawn({
        let (gateway, f) = (gateway.clone(), f.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                drop(gateway.track(&f));
            }
        }
    });
    tokio::time::sleep(TICK * 10).await;
    assert!(orchestrator.scales_of(&f).is_empty(), "the standby scaled");
    lead.send(true).unwrap();
    eventually("a decision", || !orchestrator.scales_of(&f).is_empty()).await;
    tokio::time::sleep(TICK * 6).await;
    load.abort();
    // 100 req/s at 10 each: about 10, not the count of everything heard since it started.
    let most = orchestrator
        .scales_of(&f)
        .iter()
        .map(|(n, _)| *n)
        .max()
        .unwrap();
    assert!(
        (5..=14).contains(&most),
        "scaled to {most} for about 100 req/s"
    );
}

#[tokio::test]
async fn a_count_set_from_outside_holds_for_a_stable_window() {
    let p = Platform::start().await;
    let f = p
        .deploy(
            "echo",
            &[
                CAPACITY,
                EXACT,
                ("com.openfaas.scale.target", "5"),
                ("com.sluice.scale.window", "30s"),
            ],
        )
        .await;
    let orchestrator = Recorder::with(&[(&f, 1)]);
    let (_lead, leads) = watch::channel(true);
    let autoscaler = p.autoscaler(orchestrator.clone(), leads).await;
    let gateway = p.gateway("gateway-a").await;
    let held: Vec<_> = (0..10).map(|_| gateway.track(&f)).collect();
    eventually("2 replicas", || orchestrator.current(&f) == 2).await;
    // Someone scales the Deployment by hand (kubectl scale): the autoscaler leaves it.
    orchestrator.replicas.lock().unwrap().insert(f.clone(), 7);
    eventually("the outside count seen", || {
        autoscaler
            .status(&f)
            .is_some_and(|s| s.reason.contains("set from outside"))
    })
    .await;
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(
        orchestrator.current(&f),
        7,
        "the autoscaler undid a count set by hand"
    );
    drop(held);
}
