//! Fast node loss: the surviving nodes learn from the API that a peer's pod is gone and
//! act at once, instead of waiting out the consumer groups' session timeout.
//!
//! A pod counts as lost when the API deletes it, or marks it for deletion because its
//! node is gone or unreachable (the `DisruptionTarget` condition with reason
//! `DeletionByPodGC` or `DeletionByTaintManager`). A pod that drained cleanly is deleted
//! too, after it left its groups: the reaction then finds nothing to do. A watch that
//! restarts relists the pods; any pod seen before and missing from the new list was
//! deleted while the watch was away, and is lost too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

/// What a node does about a lost peer.
#[async_trait]
pub trait PeerLoss: Send + Sync {
    /// `pod` (a node identity) is gone for good, for the reason given.
    async fn peer_lost(&self, pod: &str, reason: &str);
}

/// Reasons of the `DisruptionTarget` condition that mean the pod's node is gone.
const NODE_GONE: [&str; 2] = ["DeletionByPodGC", "DeletionByTaintManager"];

/// Whether the API says the pod's node is gone (the pod will not drain).
pub fn node_gone(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| {
            c.type_ == "DisruptionTarget"
                && c.status == "True"
                && c.reason.as_deref().is_some_and(|r| NODE_GONE.contains(&r))
        })
        .map(|c| {
            format!(
                "its node is gone ({})",
                c.reason.as_deref().unwrap_or("DisruptionTarget")
            )
        })
}

/// Tracks the peers' pods and says which are lost, once each.
#[derive(Debug, Default)]
pub struct PeerTracker {
    me: String,
    /// Pods known, by uid.
    known: BTreeMap<String, String>,
    /// Pods seen in the current relist.
    relisted: BTreeSet<String>,
    /// Incarnations already reported lost.
    reported: BTreeSet<String>,
}

impl PeerTracker {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            ..Self::default()
        }
    }

    /// The peers lost according to this event: `(pod name, reason)`.
    pub fn on_event(&mut self, event: Event<Pod>) -> Vec<(String, String)> {
        let mut lost = Vec::new();
        match event {
            Event::Init => self.relisted.clear(),
            Event::InitApply(pod) => {
                if let Some(uid) = pod.metadata.uid.clone() {
                    self.relisted.insert(uid);
                }
                lost.extend(self.applied(&pod));
            }
            Event::InitDone => {
                let missing: Vec<(String, String)> = self
                    .known
                    .iter()
                    .filter(|(uid, _)| !self.relisted.contains(*uid))
                    .map(|(uid, name)| (uid.clone(), name.clone()))
                    .collect();
                for (uid, name) in missing {
                    self.known.remove(&uid);
                    lost.extend(self.report(&uid, &name, "its pod was deleted"));
                }
            }
            Event::Apply(pod) => lost.extend(self.applied(&pod)),
            Event::Delete(pod) => {
                if let (Some(uid), Some(name)) =
                    (pod.metadata.uid.clone(), pod.metadata.name.clone())
                {
                    self.known.remove(&uid);
                    lost.extend(self.report(&uid, &name, "its pod was deleted"));
                }
            }
        }
        lost
    }

    fn applied(&mut self, pod: &Pod) -> Option<(String, String)> {
        let uid = pod.metadata.uid.clone()?;
        let name = pod.metadata.name.clone()?;
        self.known.insert(uid.clone(), name.clone());
        let reason = node_gone(pod)?;
        self.report(&uid, &name, &reason)
    }

    fn report(&mut self, uid: &str, name: &str, reason: &str) -> Option<(String, String)> {
        if name == self.me || !self.reported.insert(uid.to_owned()) {
            return None;
        }
        Some((name.to_owned(), reason.to_owned()))
    }
}

/// Watches the peers' pods until `stop` turns true, and hands each lost one to `handler`.
pub async fn watch_peers(
    api: Api<Pod>,
    selector: String,
    me: String,
    handler: Arc<dyn PeerLoss>,
    mut stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut tracker = PeerTracker::new(me);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stop.changed() => return,
        };
        match event {
            Some(Ok(event)) => {
                for (pod, reason) in tracker.on_event(event) {
                    tracing::warn!(peer = %pod, "peer lost: {reason}; taking over its work now");
                    handler.peer_lost(&pod, &reason).await;
                }
            }
            Some(Err(e)) => tracing::warn!("watching the peer pods: {e} (retrying)"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn with_condition(mut pod: Pod, reason: &str) -> Pod {
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn a_deleted_peer_is_lost_once_and_this_node_never() {
        let mut t = PeerTracker::new("ws-0");
        assert!(t.on_event(Event::Apply(pod("ws-1", "u1"))).is_empty());
        let lost = t.on_event(Event::Delete(pod("ws-1", "u1")));
        assert_eq!(
            lost,
            vec![("ws-1".to_owned(), "its pod was deleted".to_owned())]
        );
        assert!(
            t.on_event(Event::Delete(pod("ws-1", "u1"))).is_empty(),
            "once"
        );
        assert!(
            t.on_event(Event::Delete(pod("ws-0", "u0"))).is_empty(),
            "not me"
        );
        // The StatefulSet's replacement is a new incarnation under the same name.
        assert_eq!(t.on_event(Event::Delete(pod("ws-1", "u1b"))).len(), 1);
    }

    #[test]
    fn a_pod_whose_node_is_gone_is_lost_before_it_is_deleted() {
        let mut t = PeerTracker::new("ws-0");
        let evicted = with_condition(pod("ws-2", "u2"), "PreemptionByScheduler");
        assert!(
            t.on_event(Event::Apply(evicted)).is_empty(),
            "drains normally"
        );
        let gone = with_condition(pod("ws-2", "u2"), "DeletionByPodGC");
        let lost = t.on_event(Event::Apply(gone));
        assert_eq!(lost.len(), 1);
        assert!(lost[0].1.contains("DeletionByPodGC"), "{lost:?}");
        assert!(
            t.on_event(Event::Delete(pod("ws-2", "u2"))).is_empty(),
            "reported already"
        );
    }

    #[test]
    fn a_pod_missing_from_a_relist_was_deleted_while_the_watch_was_away() {
        let mut t = PeerTracker::new("ws-0");
        for event in [
            Event::Init,
            Event::InitApply(pod("ws-0", "u0")),
            Event::InitApply(pod("ws-1", "u1")),
            Event::InitApply(pod("ws-2", "u2")),
            Event::InitDone,
        ] {
            assert!(t.on_event(event).is_empty());
        }
        let mut lost = Vec::new();
        for event in [
            Event::Init,
            Event::InitApply(pod("ws-0", "u0")),
            Event::InitApply(pod("ws-2", "u2")),
            Event::InitDone,
        ] {
            lost.extend(t.on_event(event));
        }
        assert_eq!(
            lost,
            vec![("ws-1".to_owned(), "its pod was deleted".to_owned())]
        );
    }
}
