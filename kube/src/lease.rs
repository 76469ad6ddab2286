//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it.
//!
//! A candidate takes the Lease when it is free, or when its holder has not renewed it for a
//! whole lease duration *as measured by the candidate's own clock since it last saw the Lease
//! change* (remote timestamps are never compared with the local clock, so clock skew does not
//! matter). Every write carries the `resourceVersion` it read, so of two candidates racing for
//! the Lease one wins and the other is told (409). The leader renews every retry period and
//! steps down if it could not renew within the renew deadline; on a clean stop it hands the
//! Lease back (empty holder), so a standby takes over at its next try.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timings of an election (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name, in the Api's namespace.
    pub name: String,
    /// Who this candidate is (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often candidates try, and leaders renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate's view of the Lease.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease's spec as last seen, and when (by the local clock) it was seen to change.
    observed: Option<(LeaseSpec, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|(s, _)| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    fn is_leader(&self) -> bool {
        self.holder() == Some(self.config.identity.as_str())
    }

    /// Whether the holder's term, as this candidate measures it, is still running.
    fn held_at(&self, at: Instant) -> bool {
        self.observed.as_ref().is_some_and(|(s, seen)| {
            let term = Duration::from_secs(
                u64::try_from(s.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            *seen + term > at
        })
    }

    fn observe(&mut self, lease: &Lease, at: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
            self.observed = Some((spec, at));
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease; `Ok(true)` while this candidate holds it.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let at = Instant::now();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, at);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease, at);
        if self.holder().is_some() && !self.is_leader() && self.held_at(at) {
            return Ok(false);
        }
        let old = lease.spec.clone().unwrap_or_default();
        let spec = if self.is_leader() {
            self.spec(old.acquire_time, old.lease_transitions.unwrap_or(0))
        } else {
            self.spec(None, old.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        // Carries the resourceVersion read: a candidate that raced us makes this a 409.
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written, at);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands the Lease back, so a standby need not wait for it to run out.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "handed the lease back"),
            Err(error) => {
                tracing::warn!(lease = %self.config.name, %error, "cannot hand the lease back")
            }
        }
    }
}

/// Runs for the Lease until `stop`: `leading` is `true` while this candidate is the leader.
/// On `stop` a leader hands the Lease back before returning.
pub async fn campaign(
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let retry = config.retry_period;
    let deadline = config.renew_deadline;
    let mut elector = Elector {
        api,
        config,
        observed: None,
    };
    let mut last_renewal: Option<Instant> = None;
    loop {
        let result = elector.try_acquire_or_renew().await;
        let at = Instant::now();
        match result {
            Ok(true) => {
                if last_renewal.is_none() {
                    tracing::info!(lease = %elector.config.name, identity = %elector.config.identity, "leading");
                }
                last_renewal = Some(at);
                leading.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(false) | Err(_) => {
                if let Err(error) = &result {
                    tracing::warn!(lease = %elector.config.name, %error, "cannot reach the lease");
                }
                // A leader that could not renew within the deadline steps down.
                if last_renewal.is_some_and(|r| at.duration_since(r) >= deadline)
                    || (last_renewal.is_some() && matches!(result, Ok(false)))
                {
                    tracing::warn!(lease = %elector.config.name, "lost the lease; standing by");
                    last_renewal = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
            }
        }
        // Candidates spread their tries a little, so they do not all ask at once.
        let pause = if last_renewal.is_some() {
            retry
        } else {
            retry.mul_f64(1.0 + rand_fraction() * 0.2)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if leading.send_if_modified(|l| std::mem::replace(l, false)) || elector.is_leader() {
        elector.release().await;
    }
}

/// A fraction in [0, 1) from the clock, enough to spread candidates' tries.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}
