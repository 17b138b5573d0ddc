//! A Wellspring node: the top of the supervision tree, running a set of DAGs.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;
use wellspring_protocol::Dag;

use crate::dag::{DagError, NodeEnv, dag_child, prepare};
use crate::supervision::{ChildLink, Health, Shutdown, Supervisor};

/// A running node. Must be used inside an actix system.
pub struct Node {
    supervisor: Addr<Supervisor>,
    env: NodeEnv,
}

impl Node {
    /// Prepares every DAG's topics, then starts its actors.
    pub async fn start(env: NodeEnv, dags: Vec<Dag>) -> Result<Node, DagError> {
        for dag in &dags {
            prepare(dag, &env).await?;
        }
        let mut supervisor = Supervisor::new(
            env.config.node_id.clone(),
            env.config.dag_restart.clone(),
            ChildLink::detached(env.config.node_id.clone()),
            env.health.clone(),
        )
        .without_escalation();
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
