//! `GET /metrics`: the node's registry (every counter, gauge and histogram, each stage's
//! shards, lag, rebalances and restore times) and, read at each scrape, every task
//! group's figures on this node's shards: its queue depth, leases and desired workers
//! (the autoscaling signal). Every node exports its own, and a scraper sums them.

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::{CONTENT_TYPE, encode};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wellspring_actors::metrics::PREFIX;
use wellspring_actors::taskstore::Scope;
use wellspring_protocol::taskstore::GroupStats;

use super::Api;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupStatusLabels {
    group: String,
    status: &'static str,
}

/// The task groups' families, filled from this node's shards.
fn task_groups(groups: &[GroupStats]) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let tasks = Family::<GroupStatusLabels, Gauge>::default();
    let desired = Family::<GroupLabels, Gauge>::default();
    let oldest = Family::<GroupLabels, Gauge<f64, AtomicU64>>::default();
    for stats in groups {
        let group = || stats.group.clone();
        for (status, n) in [
            ("available", stats.available),
            ("leased", stats.leased),
            ("succeeded", stats.succeeded),
            ("failed", stats.failed),
            ("dead-lettered", stats.dead_lettered),
        ] {
            let labels = GroupStatusLabels {
                group: group(),
                status,
            };
            tasks
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        desired
            .get_or_create(&GroupLabels { group: group() })
            .set(i64::from(stats.desired_workers));
        if let Some(ms) = stats.oldest_waiting_ms {
            oldest
                .get_or_create(&GroupLabels { group: group() })
                .set(ms as f64 / 1000.0);
        }
    }
    registry.register(
        "task_group_tasks",
        "Tasks of a group by status (available: the queue depth; leased: held by workers)",
        tasks,
    );
    registry.register(
        "task_group_desired_workers",
        "Workers a group wants now (autoscaling signal)",
        desired,
    );
    registry.register(
        "task_group_oldest_waiting_seconds",
        "How long the oldest available task has waited",
        oldest,
    );
    registry
}

pub(super) async fn exposition(State(api): State<Api>) -> Response {
    let mut groups = Vec::new();
    for group in api.store.groups() {
        if let Ok(stats) = api.store.stats(&group.name, Scope::Local).await {
            groups.push(stats);
        }
    }
    let mut text = String::new();
    let encoded = api
        .metrics
        .encode(&mut text)
        .and_then(|()| encode(&mut text, &task_groups(&groups)));
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be written",
        )
            .into_response(),
    }
}
