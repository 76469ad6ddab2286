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
    /// Whether the timings can keep one leader at a time (client-go's rule:
    /// lease duration > renew deadline > 1.2 × retry period).
    pub fn is_sound(&self) -> bool {
        self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period.mul_f64(1.2)
            && !self.retry_period.is_zero()
    }

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
///
/// Every call to the API server is bounded: a leader whose renewal hangs steps down when its
/// renew deadline passes (counted from the start of its last successful round, as client-go
/// counts it), well before a standby may take the Lease (one lease duration after it last saw
/// it change), so two leaders never act at once.
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
    // When the last successful round started, while leading.
    let mut renewed: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // A leader's round may last until its deadline; a candidate's, one renew deadline.
        let until = renewed.map_or(started + deadline, |r| r + deadline);
        let result = tokio::select! {
            () = stop.cancelled() => break,
            r = tokio::time::timeout_at(until, elector.try_acquire_or_renew()) => r,
        };
        match result {
            Ok(Ok(true)) => {
                if renewed.is_none() {
                    tracing::info!(lease = %elector.config.name, identity = %elector.config.identity, "leading");
                }
                renewed = Some(started);
                leading.send_if_modified(|l| !std::mem::replace(l, true));
            }
            other => {
                match &other {
                    Ok(Err(error)) => {
                        tracing::warn!(lease = %elector.config.name, %error, "cannot reach the lease")
                    }
                    Err(_) => {
                        tracing::warn!(lease = %elector.config.name, "the API server did not answer in time")
                    }
                    Ok(Ok(_)) => {}
                }
                // Taken by another, or not renewed within the deadline: step down.
                let lost = matches!(other, Ok(Ok(false)));
                if renewed.is_some_and(|r| lost || Instant::now() >= r + deadline) {
                    tracing::warn!(lease = %elector.config.name, "lost the lease; standing by");
                    renewed = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
            }
        }
        // Candidates spread their tries a little, so they do not all ask at once.
        let pause = if renewed.is_some() {
            retry
        } else {
            retry.mul_f64(1.0 + rand_fraction() * 1.2)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if leading.send_if_modified(|l| std::mem::replace(l, false)) || elector.is_leader() {
        let _ = tokio::time::timeout(deadline, elector.release()).await;
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
