//! `GET /api/dags`: each DAG's graph, each node with its counters: records on its topic
//! and their rate from the view (cluster-wide), the stage's metrics from this node (the
//! API adds every live peer's, `crate::api::status`).

use std::collections::BTreeMap;

use wellspring_actors::metrics::names;
use wellspring_protocol::spec::NodeKind;
use wellspring_protocol::status::{DagList, DagNodeStatus, DagStatus};

use super::StatusView;

impl StatusView {
    pub fn dag_list(&self) -> DagList {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let rates = shared.rates.lock().clone();
        let mut owners: BTreeMap<(String, String), BTreeMap<String, Vec<u32>>> = BTreeMap::new();
        for (dag, stage, partitions) in metrics.owned_partitions() {
            owners.entry((dag, stage)).or_default().insert(
                shared.node_id.clone(),
                partitions.iter().map(|tp| tp.partition).collect(),
            );
        }
        let dags = self.with(|model| {
            model
                .dags
                .iter()
                .map(|shape| {
                    let dag = &shape.dag;
                    let mut edges = Vec::new();
                    let nodes = dag
                        .nodes
                        .iter()
                        .map(|node| {
                            let inputs: Vec<String> = node
                                .kind
                                .upstream()
                                .into_iter()
                                .map(str::to_owned)
                                .collect();
                            for input in &inputs {
                                edges.push([input.clone(), node.name.clone()]);
                            }
                            let topic = match &node.kind {
                                NodeKind::TopicStream { topic }
                                | NodeKind::TopicTable { topic }
                                | NodeKind::Publish { topic, .. } => Some(topic.clone()),
                                _ => None,
                            };
                            let get = |name| metrics.get(&dag.name, &node.name, name);
                            DagNodeStatus {
                                name: node.name.clone(),
                                kind: node.kind.type_name().into(),
                                inputs,
                                records: topic
                                    .as_ref()
                                    .and_then(|t| model.records.get(t))
                                    .copied()
                                    .unwrap_or(0),
                                rate: topic
                                    .as_ref()
                                    .and_then(|t| rates.get(t))
                                    .copied()
                                    .unwrap_or(0.0),
                                topic,
                                records_in: get(names::IN),
                                records_out: get(names::OUT),
                                in_flight: metrics
                                    .gauge_value(&dag.name, &node.name, names::INFLIGHT)
                                    .max(0) as u64,
                                retries: get(names::RETRIES),
                                dead_letters: get(names::DEAD_LETTERS),
                                consumer_lag: metrics.stage_lag(&dag.name, &node.name),
                                shards: owners
                                    .get(&(dag.name.clone(), node.name.clone()))
                                    .cloned()
                                    .unwrap_or_default(),
                            }
                        })
                        .collect();
                    DagStatus {
                        name: dag.name.clone(),
                        description: dag.description.clone(),
                        nodes,
                        edges,
                        dead_letter_topic: dag.settings.dead_letter_topic.clone(),
                        incomplete_topic: dag.settings.incomplete_topic.clone(),
                    }
                })
                .collect()
        });
        DagList {
            node: shared.node_id.clone(),
            dags,
            nodes_answered: vec![shared.node_id.clone()],
            unanswered: Vec::new(),
            view_error: self.error(),
        }
    }
}
