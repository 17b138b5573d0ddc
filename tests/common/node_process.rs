//! `wellspring run --kafka` as a real process: started, stopped with SIGTERM, killed with
//! SIGKILL.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};

use wellspring_nodes::services::Services;

/// `run` arguments for the reference DAG with its tasks pointed at `services`.
pub fn reference_dag_args(services: &Services, session_timeout: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--dag", "examples/reference-dag.yaml"]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--session-timeout".into(), session_timeout.into()]);
    for (name, url) in services.variables() {
        args.extend(["--set".into(), format!("{name}={url}")]);
    }
    args
}

pub struct NodeProcess {
    pub id: String,
    /// Where its API answers.
    pub url: String,
    child: Child,
}

impl NodeProcess {
    /// Starts `wellspring run --kafka BROKERS --node-id ID ARGS...` on a free loopback
    /// port; returns once the node says where it serves (its topics exist by then).
    pub fn start(brokers: &str, id: &str, args: &[String]) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wellspring"))
            .args(["run", "--kafka", brokers, "--node-id", id])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(
                "RUST_LOG",
                std::env::var("WELLSPRING_TEST_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env_remove("WELLSPRING_KAFKA")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines
            .find(|l| l.as_ref().is_ok_and(|l| l.contains("http://")))
            .unwrap_or_else(|| panic!("node {id} never said where it serves"))
            .unwrap();
        assert!(line.contains(&format!("on Kafka at {brokers}")), "{line}");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap()
            .trim_end_matches([';', ','])
            .to_owned();
        // WELLSPRING_TEST_NODE_LOGS=DIR keeps each node's log in DIR/NODE.log (with
        // WELLSPRING_TEST_NODE_LOG=info, say) for a failure to be read.
        let mut keep = std::env::var("WELLSPRING_TEST_NODE_LOGS")
            .ok()
            .and_then(|dir| std::fs::File::create(format!("{dir}/{id}.log")).ok());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        NodeProcess {
            id: id.to_owned(),
            url,
            child,
        }
    }

    /// SIGKILL: the node dies without a chance to flush, commit or leave.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the process to end.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
