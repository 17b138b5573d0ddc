//! `wellspring run --kafka` (or `run --data-dir`) as a real process: started, stopped
//! with SIGTERM, killed with SIGKILL.
//!
//! The binary is the caller's to name (`env!("CARGO_BIN_EXE_wellspring")` in a test or
//! benchmark of the package that builds it): this crate cannot depend on that package.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// `run` arguments for the reference DAG with its tasks pointed at the simulated
/// services' `variables` (`Services::variables()`: name, URL).
pub fn reference_dag_args(
    variables: impl IntoIterator<Item = (String, String)>,
    session_timeout: &str,
) -> Vec<String> {
    let mut args: Vec<String> = ["--dag", "examples/reference-dag.yaml"]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--session-timeout".into(), session_timeout.into()]);
    for (name, url) in variables {
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
    /// Starts `BINARY run --kafka BROKERS --node-id ID ARGS...` in the repository's root
    /// on a free loopback port; returns once the node says where it serves (its topics
    /// exist by then).
    pub fn start(binary: impl AsRef<Path>, brokers: &str, id: &str, args: &[String]) -> Self {
        let log = ["--kafka".to_owned(), brokers.to_owned()];
        Self::spawn(
            binary.as_ref(),
            &log,
            &format!("on Kafka at {brokers}"),
            id,
            args,
        )
    }

    /// Starts `BINARY run --data-dir DIR --node-id ID ARGS...`: the durable embedded log
    /// in `data_dir` (as [`NodeProcess::start`] does otherwise).
    pub fn start_on_disk(
        binary: impl AsRef<Path>,
        data_dir: &Path,
        id: &str,
        args: &[String],
    ) -> Self {
        let log = ["--data-dir".to_owned(), data_dir.display().to_string()];
        let backend = format!("on disk in {}", data_dir.display());
        Self::spawn(binary.as_ref(), &log, &backend, id, args)
    }

    /// Starts the node on the log `log_args` name; its first line must say `backend`.
    fn spawn(binary: &Path, log_args: &[String], backend: &str, id: &str, args: &[String]) -> Self {
        let mut child = Command::new(binary)
            .arg("run")
            .args(log_args)
            .args(["--node-id", id])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(crate::repository_root())
            .env(
                "RUST_LOG",
                std::env::var("WELLSPRING_TEST_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env_remove("WELLSPRING_KAFKA")
            .env_remove("WELLSPRING_DATA_DIR")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("node {id}: {} does not start: {e}", binary.display()));
        let stderr = child.stderr.take().expect("the node's stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        // What it said before, for the failure to name its cause.
        let mut before = Vec::new();
        let line = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| {
                let serves = l.contains("http://") && l.contains(" serving ");
                if !serves {
                    before.push(l.clone());
                }
                serves
            })
            .unwrap_or_else(|| {
                panic!(
                    "node {id} never said where it serves; it said:\n{}",
                    before.join("\n")
                )
            });
        assert!(line.contains(backend), "{line}");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("node {id}: no URL in {line:?}"))
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

    /// The sum of the node's `/metrics` counter `family` for DAG node `node` (0 while it
    /// has none).
    pub async fn counter(&self, family: &str, node: &str) -> f64 {
        let id = &self.id;
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("node {id}: no /metrics: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("node {id}: /metrics unread: {e}"));
        let label = format!("node=\"{node}\"");
        text.lines()
            .filter(|l| l.starts_with(family) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the reference DAG's experiment aggregate is out and none of its tasks has a
    /// call left to finish (a stop then commits every output).
    pub async fn reference_dag_finished(&self) -> bool {
        if self
            .counter("wellspring_out_total", "images-experiment")
            .await
            == 0.0
        {
            return false;
        }
        for task in [
            "image-metrics",
            "site-features",
            "well-thumbnails",
            "plate-features",
        ] {
            if self.counter("wellspring_pending", task).await > 0.0 {
                return false;
            }
        }
        true
    }

    /// SIGKILL: the node dies without a chance to flush, commit or leave.
    pub fn kill(&mut self) {
        let id = &self.id;
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("node {id} cannot be killed: {e}"));
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("node {id} was killed but not reaped: {e}"));
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the process to end.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_terminate();
        self.wait_for_exit()
    }

    /// Sends SIGTERM and returns at once (the node drains meanwhile).
    pub fn send_terminate(&self) {
        let id = &self.id;
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -TERM for node {id} does not run: {e}"));
        assert!(status.success(), "kill -TERM for node {id}: {status}");
    }

    /// Waits for the process to end.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let id = &self.id;
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("node {id} was stopped but not reaped: {e}"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
