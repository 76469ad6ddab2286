//! Leader election against a scripted API server that keeps one Lease as the real one does
//! (create once, replace only at the version read): one leader at a time, a standby takes over
//! within one lease period when the leader stops, and within a lease period and a retry when
//! it dies without a word.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_kube::lease::{LeaseConfig, campaign};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Reply, not_found, status};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/openfaas/leases/sluice-autoscaler";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/openfaas/leases";

/// The API server's state.
#[derive(Default)]
struct Server {
    /// The Lease as the API server keeps it: `None` until created.
    lease: Mutex<Option<Value>>,
    /// While set, the API server takes calls and never answers them.
    hang: std::sync::atomic::AtomicBool,
}

type Stored = Arc<Server>;

/// A client whose every call is answered from `stored`, with the API server's rules.
fn client(stored: Stored) -> Client {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Reply>();
    tokio::spawn(async move {
        let mut api = crate::ApiServer(handle);
        let mut unanswered = Vec::new();
        loop {
            let call = api.next_or_end().await;
            let Some(call) = call else { return };
            if stored.hang.load(std::sync::atomic::Ordering::SeqCst) {
                unanswered.push(call);
                continue;
            }
            let mut lease = stored.lease.lock().unwrap();
            let (method, path) = (call.method.to_string(), call.path.clone());
            match (method.as_str(), path.as_str()) {
                ("GET", LEASE) => match lease.clone() {
                    Some(l) => call.reply(200, &l),
                    None => call.reply(
                        404,
                        &not_found("leases.coordination.k8s.io", "sluice-autoscaler"),
                    ),
                },
                ("POST", LEASES) => {
                    if lease.is_some() {
                        call.refuse(
                            409,
                            "AlreadyExists",
                            "leases.coordination.k8s.io \"sluice-autoscaler\" already exists",
                        );
                    } else {
                        let mut created = call.body().clone();
                        created["metadata"]["resourceVersion"] = json!("1");
                        *lease = Some(created.clone());
                        call.reply(201, &created);
                    }
                }
                ("PUT", LEASE) => {
                    let current = lease
                        .as_ref()
                        .map(|l| l["metadata"]["resourceVersion"].clone());
                    if current.as_ref() != Some(&call.body()["metadata"]["resourceVersion"]) {
                        call.refuse(409, "Conflict", "Operation cannot be fulfilled on leases.coordination.k8s.io \"sluice-autoscaler\": the object has been modified; please apply your changes to the latest version and try again");
                    } else {
                        let version: u64 = current.unwrap().as_str().unwrap().parse().unwrap();
                        let mut replaced = call.body().clone();
                        replaced["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                        *lease = Some(replaced.clone());
                        call.reply(200, &replaced);
                    }
                }
                (method, path) => call.reply(
                    400,
                    &status(400, "BadRequest", &format!("unexpected {method} {path}")),
                ),
            }
        }
    });
    Client::new(service, "openfaas")
}

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(100),
        ..LeaseConfig::new("sluice-autoscaler", identity)
    }
}

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(stored: &Stored, identity: &str) -> Candidate {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client(stored.clone()), "openfaas");
    let (tx, leading) = watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(campaign(api, config(identity), tx, stop.clone()));
    Candidate {
        leading,
        stop,
        task,
    }
}

async fn until_leading(c: &Candidate, within: Duration) -> Duration {
    let start = Instant::now();
    let mut leading = c.leading.clone();
    tokio::time::timeout(within, leading.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("not leading after {within:?}"))
        .unwrap();
    start.elapsed()
}

fn holder(stored: &Stored) -> String {
    stored.lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn one_leader_and_a_standby_takes_over_within_a_lease_period() {
    let stored: Stored = Arc::default();
    let first = candidate(&stored, "autoscaler-0");
    until_leading(&first, Duration::from_secs(5)).await;
    let second = candidate(&stored, "autoscaler-1");
    // The standby keeps trying but never leads while the leader renews.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(*first.leading.borrow());
    assert!(!*second.leading.borrow(), "two leaders at once");
    assert_eq!(holder(&stored), "autoscaler-0");
    let transitions =
        stored.lease.lock().unwrap().as_ref().unwrap()["spec"]["leaseTransitions"].clone();

    // The leader stops cleanly: it hands the Lease back and the standby takes it at its next
    // try, well within one lease period.
    first.stop.cancel();
    first.task.await.unwrap();
    let took = until_leading(&second, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "took over after {took:?}");
    assert_eq!(holder(&stored), "autoscaler-1");
    assert_ne!(
        stored.lease.lock().unwrap().as_ref().unwrap()["spec"]["leaseTransitions"],
        transitions
    );

    // The new leader dies without a word: a third candidate waits the lease out (by its own
    // clock), then takes over.
    let third = candidate(&stored, "autoscaler-2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*third.leading.borrow());
    second.task.abort();
    let took = until_leading(&third, Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_millis(1000 + 2 * 100 + 300),
        "took over {took:?} after the leader died"
    );
    assert_eq!(holder(&stored), "autoscaler-2");
    third.stop.cancel();
}

#[tokio::test]
async fn a_leader_whose_renewal_hangs_steps_down_by_its_deadline() {
    let stored: Stored = Arc::default();
    let leader = candidate(&stored, "autoscaler-0");
    until_leading(&leader, Duration::from_secs(5)).await;
    // The API server stops answering: the renewal hangs, and the leader must not go on
    // believing it leads past its renew deadline (a standby may take over one lease duration
    // after it last saw the Lease change).
    stored.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let hung = Instant::now();
    let mut leading = leader.leading.clone();
    tokio::time::timeout(Duration::from_secs(3), leading.wait_for(|l| !*l))
        .await
        .expect("still leading while its renewals hang")
        .unwrap();
    let stepped_down = hung.elapsed();
    stored
        .hang
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        stepped_down < Duration::from_millis(700 + 200),
        "stepped down {stepped_down:?} after the API server stopped answering"
    );
    leader.stop.cancel();
}
