//! A Wellspring node: the top of the supervision tree, running a set of DAGs.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;
use wellspring_protocol::Dag;
use wellspring_protocol::spec::TaskDecl;
use wellspring_protocol::taskstore::GroupSettings;

use crate::dag::{DagError, NodeEnv, dag_child, prepare};
use crate::supervision::{ChildLink, ChildSpec, Health, Shutdown, Supervisor};

/// Creates the task-store groups of a DAG's queue tasks that do not exist yet, so
/// workers can claim from the moment the DAG runs.
async fn create_queue_groups(dag: &Dag, env: &NodeEnv) -> Result<(), DagError> {
    for (name, decl) in &dag.tasks {
        let TaskDecl::Queue(queue) = decl else {
            continue;
        };
        let Some(store) = &env.task_store else {
            return Err(DagError::Node {
                dag: dag.name.clone(),
                node: name.clone(),
                message: "a queue task needs a node that runs the task store (wellspring run)"
                    .into(),
            });
        };
        if store.groups().iter().any(|g| g.name == queue.group) {
            continue;
        }
        let settings = match &queue.group_settings {
            Some(json) => serde_json::from_value(json.clone()).map_err(|e| DagError::Node {
                dag: dag.name.clone(),
                node: name.clone(),
                message: format!("group-settings: {e}"),
            })?,
            None => GroupSettings::named(&queue.group),
        };
        store
            .create_group(settings)
            .await
            .map_err(|e| DagError::Node {
                dag: dag.name.clone(),
                node: name.clone(),
                message: format!("creating task group {}: {e}", queue.group),
            })?;
    }
    Ok(())
}

/// A running node. Must be used inside an actix system.
pub struct Node {
    supervisor: Addr<Supervisor>,
    env: NodeEnv,
}

impl Node {
    /// Prepares every DAG's topics, then starts its actors.
    pub async fn start(env: NodeEnv, dags: Vec<Dag>) -> Result<Node, DagError> {
        if let Some(store) = &env.task_store {
            store.prepare().await.map_err(|e| DagError::Topic {
                dag: "task-store".into(),
                message: e.to_string(),
            })?;
        }
        for dag in &dags {
            prepare(dag, &env).await?;
            create_queue_groups(dag, &env).await?;
        }
        let mut supervisor = Supervisor::new(
            env.config.node_id.clone(),
            env.config.dag_restart.clone(),
            ChildLink::detached(env.config.node_id.clone()),
            env.health.clone(),
        )
        .without_escalation();
        if let Some(store) = env.task_store.clone() {
            let policy = env.config.stage_restart.clone();
            let health = env.health.clone();
            supervisor = supervisor.with_child(ChildSpec::new("task-store", move |link| {
                let mut tree = Supervisor::new("task-store", policy.clone(), link, health.clone());
                for child in store.children() {
                    tree = tree.with_child(child);
                }
                Ok(tree.start().recipient())
            }));
        }
        for dag in dags {
            supervisor = supervisor.with_child(dag_child(Arc::new(dag), env.clone()));
        }
        Ok(Node {
            supervisor: supervisor.start(),
            env,
        })
    }

    pub fn health(&self) -> &Health {
        &self.env.health
    }

    pub fn env(&self) -> &NodeEnv {
        &self.env
    }

    /// Stops every DAG cleanly: stages flush, commit and leave their groups.
    pub async fn shutdown(self) {
        let (done, wait) = oneshot::channel();
        if self.supervisor.send(Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
