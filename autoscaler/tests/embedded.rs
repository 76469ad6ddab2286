//! The embedded autoscaler on a paused clock: requests counted through `track`, rates measured
//! between ticks, each function scaled on the measure its labels chose, and back down once its
//! windows have passed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_autoscaler::{AutoscalerConfig, EmbeddedAutoscaler};
use sluice_core::{
    Autoscaler, FunctionDeployment, FunctionRef, FunctionSpec, FunctionStore, LogStream,
    Orchestrator, ProviderError, Replicas, StoreError, Timestamp,
};

const SEC: Duration = Duration::from_secs(1);

/// An orchestrator that only keeps counts.
#[derive(Debug, Default)]
struct Counts(Mutex<HashMap<FunctionRef, u32>>);

impl Counts {
    fn of(&self, f: &FunctionRef) -> u32 {
        self.0.lock().unwrap()[f]
    }
}

#[async_trait]
impl Orchestrator for Counts {
    fn validate(&self, _: &FunctionSpec) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        self.0
            .lock()
            .unwrap()
            .insert(spec.function.clone(), spec.replicas);
        Ok(())
    }
    async fn remove(&self, f: &FunctionRef) -> Result<(), ProviderError> {
        self.0.lock().unwrap().remove(f);
        Ok(())
    }
    async fn scale(&self, f: &FunctionRef, n: u32) -> Result<(), ProviderError> {
        self.0.lock().unwrap().insert(f.clone(), n);
        Ok(())
    }
    fn replicas(&self, f: &FunctionRef) -> Option<Replicas> {
        let n = *self.0.lock().unwrap().get(f)?;
        Some(Replicas {
            desired: n,
            ready: n,
        })
    }
    fn functions(&self) -> Vec<FunctionRef> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
    fn logs(&self, f: &FunctionRef, _: usize, _: bool) -> Result<LogStream, ProviderError> {
        Err(ProviderError::NotFound(f.to_string()))
    }
}

/// A registry in memory: no I/O, so nothing but the test moves the paused clock.
#[derive(Debug, Default)]
struct Registry(Mutex<BTreeMap<FunctionRef, FunctionSpec>>);

#[async_trait]
impl FunctionStore for Registry {
    async fn create(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
        self.0
            .lock()
            .unwrap()
            .insert(spec.function.clone(), spec.clone());
        Ok(())
    }
    async fn update(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
        self.create(spec).await
    }
    async fn get(&self, f: &FunctionRef) -> Result<Option<FunctionSpec>, StoreError> {
        Ok(self.0.lock().unwrap().get(f).cloned())
    }
    async fn list(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    async fn delete(&self, f: &FunctionRef) -> Result<bool, StoreError> {
        Ok(self.0.lock().unwrap().remove(f).is_some())
    }
    async fn set_replicas(&self, _: &FunctionRef, _: u32) -> Result<bool, StoreError> {
        Ok(true)
    }
}

struct Platform {
    counts: Arc<Counts>,
    registry: Arc<Registry>,
}

impl Platform {
    fn new() -> Self {
        Self {
            counts: Arc::default(),
            registry: Arc::default(),
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
        self.registry.create(&spec).await.unwrap();
        self.counts.apply(&spec).await.unwrap();
        f
    }

    fn autoscaler(&self, stable_window: Duration) -> EmbeddedAutoscaler {
        EmbeddedAutoscaler::new(
            self.counts.clone(),
            self.registry.clone(),
            AutoscalerConfig {
                stable_window,
                ..AutoscalerConfig::default()
            },
        )
    }
}

/// One second of `rate` requests to each of `functions`, each over in 40 ms (one in flight at
/// a time), then a tick.
async fn one_busy_second(autoscaler: &EmbeddedAutoscaler, functions: &[&FunctionRef], rate: u32) {
    let gap = SEC / rate;
    for _ in 0..rate {
        let held: Vec<_> = functions.iter().map(|f| autoscaler.track(f)).collect();
        tokio::time::advance(Duration::from_millis(40)).await;
        drop(held);
        tokio::time::advance(gap - Duration::from_millis(40)).await;
    }
    autoscaler.tick().await.unwrap();
}

async fn one_quiet_second(autoscaler: &EmbeddedAutoscaler) {
    tokio::time::advance(SEC).await;
    autoscaler.tick().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn twenty_requests_a_second_scale_a_function_without_labels_and_it_comes_back_after_a_window()
{
    let p = Platform::new();
    let plain = p.deploy("plain", &[]).await;
    let capacity = p
        .deploy("capacity", &[("com.openfaas.scale.type", "capacity")])
        .await;
    let rated = p
        .deploy(
            "rated",
            &[
                ("com.openfaas.scale.type", "rps"),
                ("com.openfaas.scale.target", "10"),
                ("com.openfaas.scale.target-proportion", "1"),
            ],
        )
        .await;
    let autoscaler = p.autoscaler(Duration::from_secs(60));
    let all = [&plain, &capacity, &rated];
    // A quiet start: every function has been sampled before the load.
    for _ in 0..5 {
        one_quiet_second(&autoscaler).await;
    }
    let mut up_after = None;
    for second in 1..=30 {
        one_busy_second(&autoscaler, &all, 20).await;
        if up_after.is_none() && p.counts.of(&plain) > 1 {
            up_after = Some(second);
        }
    }
    let up_after = up_after.expect("the function without labels never scaled up");
    assert!(up_after <= 5, "it took {up_after}s to scale up");
    // 20 req/s at 5 a replica aimed at 90 %: 4.5 each, so 5.
    assert_eq!(p.counts.of(&plain), 5);
    assert_eq!(p.counts.of(&rated), 2, "20 req/s at exactly 10 each");
    assert_eq!(
        p.counts.of(&capacity),
        1,
        "one request in flight at a time is far below 50 each"
    );
    let status = autoscaler.status(&plain).unwrap();
    assert!(status.reason.contains("req/s"), "{status:?}");

    // The load ends. The count holds while the stable window still remembers it (panic mode
    // holds a stable window from the burst that started it), then comes back to the minimum.
    let mut down_after = None;
    for second in 1..=90 {
        one_quiet_second(&autoscaler).await;
        let n = p.counts.of(&plain);
        assert!(n >= 1, "below its minimum");
        if second <= 25 {
            assert!(
                n > 1,
                "scaled down {second}s after the load, within its window"
            );
        }
        if n == 1 && down_after.is_none() {
            down_after = Some(second);
        }
    }
    let down_after = down_after.expect("never back to one replica");
    assert!(
        down_after <= 62,
        "back to one only {down_after}s after the load"
    );
    assert_eq!(p.counts.of(&rated), 1);
}

#[tokio::test(start_paused = true)]
async fn the_platform_window_shortens_the_way_back_unless_a_function_chose_its_own() {
    let p = Platform::new();
    let plain = p.deploy("plain", &[]).await;
    let own = p.deploy("own", &[("com.sluice.scale.window", "40s")]).await;
    let autoscaler = p.autoscaler(Duration::from_secs(10));
    for _ in 0..3 {
        one_quiet_second(&autoscaler).await;
    }
    for _ in 0..10 {
        one_busy_second(&autoscaler, &[&plain, &own], 20).await;
    }
    assert!(p.counts.of(&plain) > 1 && p.counts.of(&own) > 1);
    let mut plain_down = None;
    for second in 1..=60 {
        one_quiet_second(&autoscaler).await;
        if plain_down.is_none() && p.counts.of(&plain) == 1 {
            plain_down = Some(second);
        }
        if second <= 30 {
            assert!(p.counts.of(&own) > 1, "its own 40s window was not kept");
        }
    }
    let plain_down = plain_down.expect("never back to one on a 10 s window");
    assert!(plain_down <= 12, "{plain_down}s on a 10 s window");
    assert_eq!(p.counts.of(&own), 1, "not back to one after its own window");
}
