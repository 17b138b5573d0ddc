//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! Every node tries, every `retry_period`, to take or renew the Lease with an update that
//! carries the resourceVersion it read: the API refuses an update of an object changed
//! since (409 Conflict), so of two nodes racing for a free or expired Lease exactly one
//! wins. A Lease counts as expired when its holder has not renewed it for its duration,
//! measured on this node's own clock from when this node last saw it change (clocks of
//! different nodes are never compared). A leader that cannot renew for `renew_deadline`
//! steps down before its Lease can expire, so two leaders never act at once as long as
//! `renew_deadline` < `duration`. A draining leader stops its duties, then releases the
//! Lease (no holder), and the next node takes it on its next try.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::KubeError;

/// How long a draining leader tries to release its Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timing and naming of the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    /// This node's identity (its pod name).
    pub identity: String,
    /// How long a Lease not renewed stays with its holder.
    pub duration: Duration,
    /// A leader that could not renew for this long steps down (shorter than `duration`).
    pub renew_deadline: Duration,
    /// How often every node tries to take or renew the Lease.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.renew_deadline >= self.duration {
            out.push(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), or two leaders could act at once",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            out.push(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        out
    }
}

/// The Lease as this node last saw it, and when it saw it change.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    duration: Duration,
    transitions: i32,
    acquire_time: Option<MicroTime>,
}

/// One node's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<(Observed, Instant)>,
    leader: watch::Sender<bool>,
    last_renewed: Option<Instant>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> Self {
        Self {
            api,
            settings,
            observed: None,
            leader: watch::Sender::new(false),
            last_renewed: None,
        }
    }

    /// Whether this node leads, now and as it changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn set_leader(&self, leader: bool) {
        // Watchers hear of changes only (a renewal is not news).
        if self
            .leader
            .send_if_modified(|now| std::mem::replace(now, leader) != leader)
        {
            if leader {
                tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became the leader");
            } else {
                tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "no longer the leader");
            }
        }
    }

    /// One round: take the Lease if it is free or expired, renew it if it is ours.
    /// Answers whether this node holds it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return self.create().await;
        };
        let seen = observe(&current, self.settings.duration);
        let changed_at = match &self.observed {
            Some((before, at)) if *before == seen => *at,
            _ => now,
        };
        self.observed = Some((seen.clone(), changed_at));
        let mine = seen.holder.as_deref() == Some(self.settings.identity.as_str());
        let held_by_other = seen.holder.as_deref().is_some_and(|h| !h.is_empty()) && !mine;
        if held_by_other && now.duration_since(changed_at) < seen.duration {
            return Ok(false);
        }
        let stamp = MicroTime(Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.settings.duration)),
            acquire_time: if mine {
                seen.acquire_time.clone().or_else(|| Some(stamp.clone()))
            } else {
                Some(stamp.clone())
            },
            renew_time: Some(stamp),
            lease_transitions: Some(if mine {
                seen.transitions
            } else {
                seen.transitions + 1
            }),
            ..LeaseSpec::default()
        };
        let mut updated = current;
        updated.spec = Some(spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &updated)
            .await
        {
            Ok(stored) => {
                self.observed = Some((observe(&stored, self.settings.duration), now));
                Ok(true)
            }
            // Someone changed it since we read it: they won this round.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&mut self) -> Result<bool, KubeError> {
        let stamp = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(whole_seconds(self.settings.duration)),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(stored) => {
                self.observed = Some((observe(&stored, self.settings.duration), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One round, and what it means for leadership: a leader that fails to renew keeps
    /// leading only until its renew deadline.
    pub async fn step(&mut self) {
        let now = Instant::now();
        // The client retries an unavailable API for minutes: a leader's round must end
        // by its renew deadline, so that it steps down in time.
        let limit = match self.last_renewed {
            Some(at) => (at + self.settings.renew_deadline)
                .saturating_duration_since(now)
                .max(Duration::from_millis(10)),
            None => self.settings.renew_deadline,
        };
        let round = tokio::time::timeout(limit, self.try_acquire_or_renew())
            .await
            .unwrap_or_else(|_| Err(KubeError::Timeout(limit)));
        let now = Instant::now();
        match round {
            Ok(true) => {
                self.last_renewed = Some(now);
                self.set_leader(true);
            }
            Ok(false) => {
                self.last_renewed = None;
                self.set_leader(false);
            }
            Err(e) => {
                let within_deadline = self
                    .last_renewed
                    .is_some_and(|at| now.duration_since(at) < self.settings.renew_deadline);
                tracing::warn!(lease = %self.settings.name, "cannot reach the Lease: {e}");
                if !within_deadline {
                    self.last_renewed = None;
                    self.set_leader(false);
                }
            }
        }
    }

    /// Runs the election until `stop` turns true, then releases the Lease if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.step().await;
            // A leader renews on time even if a round took long; others just retry.
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
        self.release().await;
    }

    /// Gives the Lease up (drain): leadership ends first, so the duties stop before any
    /// other node can take over; then the Lease is left with no holder and a one-second
    /// duration, so the next node takes it on its next try instead of waiting it out.
    pub async fn release(&mut self) {
        if !self.is_leader() {
            return;
        }
        self.set_leader(false);
        self.last_renewed = None;
        // Bounded: a drain must not hang on an unreachable API.
        let read = tokio::time::timeout(RELEASE_TIMEOUT, self.api.get_opt(&self.settings.name));
        let Ok(Ok(Some(mut current))) = read.await else {
            tracing::warn!(lease = %self.settings.name, "could not read the Lease to release it (the next leader waits for it to expire)");
            return;
        };
        let seen = observe(&current, self.settings.duration);
        if seen.holder.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        current.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(seen.transitions),
            ..LeaseSpec::default()
        });
        let params = PostParams::default();
        let write = self.api.replace(&self.settings.name, &params, &current);
        match tokio::time::timeout(RELEASE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(kube::Error::Service("timed out".into())))
        {
            Ok(_) => tracing::info!(lease = %self.settings.name, "released the Lease"),
            Err(e) => tracing::warn!(
                lease = %self.settings.name,
                "could not release the Lease (the next leader waits for it to expire): {e}"
            ),
        }
    }
}

fn observe(lease: &Lease, default_duration: Duration) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    Observed {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renew_time: spec.renew_time,
        resource_version: lease.metadata.resource_version.clone(),
        duration: spec
            .lease_duration_seconds
            .map_or(default_duration, |s| Duration::from_secs(s.max(0) as u64)),
        transitions: spec.lease_transitions.unwrap_or(0),
        acquire_time: spec.acquire_time,
    }
}

fn whole_seconds(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}
