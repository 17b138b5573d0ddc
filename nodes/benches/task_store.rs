//! Task lifecycles per second over HTTP on loopback: each lifecycle is a submit, a claim
//! and a success report, every one answered only once durable on the (embedded) log. Four
//! submitters and twelve workers work concurrently against one node, first with the
//! reference API (one call per step), then with the batch calls (`/tasks/batch/...`:
//! submissions of `SUBMIT_BATCH` tasks, claims of up to `CLAIM_BATCH`, and one report
//! for all the tasks a claim gave).
//!
//! Run: `cargo bench -p wellspring-nodes --bench task_store`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde::Deserialize;
use serde_json::{Value, json};
use wellspring_nodes::run::{RunOptions, start};

const SUBMITTERS: usize = 4;
const WORKERS: usize = 12;
const TASKS: usize = 2000;
/// Tasks per batch submission, and the most a batch claim asks for.
const SUBMIT_BATCH: usize = 100;
const CLAIM_BATCH: usize = 50;
/// Lifecycles per round of the batch bench (more: a round of 2,000 is over in a few ms).
const BATCHED_TASKS: usize = 20_000;

/// What the bench reads of a task, a claim batch and a batch answer: the load generator
/// parses only what it uses, as a worker would (building whole JSON trees of every answer
/// took a third of the machine that the node shares).
#[derive(Deserialize)]
struct Leased {
    id: String,
    version: u64,
}

#[derive(Deserialize)]
struct Claimed {
    tasks: Vec<Leased>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
}

#[derive(Deserialize)]
struct Results {
    results: Vec<Item>,
}

/// One keep-alive HTTP/1.1 connection to the node, one call at a time: what each client
/// of the bench holds. Plain hyper rather than reqwest: the load generator shares the two
/// cores with the node, and reqwest's pool and its layers cost a third more per call.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
}

impl Connection {
    async fn open(base: &str) -> Connection {
        let host = base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .expect("the node listens");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("an HTTP/1.1 connection");
        tokio::spawn(connection);
        Connection { sender, host }
    }

    /// Posts `body` to `path`; the status and the body as it came.
    async fn post(&mut self, path: &str, body: Value) -> (u16, bytes::Bytes) {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("a request");
        self.sender.ready().await.expect("the connection is open");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("the node answers");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, body)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> T {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Items of a batch answer with `status`.
fn with_status(body: &[u8], status: u16) -> usize {
    parse::<Results>(body)
        .results
        .iter()
        .filter(|r| r.status == status)
        .count()
}

/// `TASKS` lifecycles: submitters submit while workers claim and report success; returns
/// how long until every task succeeded.
async fn lifecycles(base: &str, round: usize) -> Duration {
    let started = Instant::now();
    let mut jobs = Vec::new();
    for s in 0..SUBMITTERS {
        let base = base.to_owned();
        jobs.push(tokio::spawn(async move {
            let mut connection = Connection::open(&base).await;
            for i in 0..TASKS / SUBMITTERS {
                let body = json!({"cmd": ["run", format!("{round}-{s}-{i}")], "group": "bench"});
                let (status, answer) = connection.post("/tasks", body).await;
                assert_eq!(status, 201, "{answer:?}");
            }
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..WORKERS {
        let (base, done) = (base.to_owned(), done.clone());
        jobs.push(tokio::spawn(async move {
            let mut connection = Connection::open(&base).await;
            let client = format!("worker-{round}-{w}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < TASKS {
                let claim = json!({"groups": ["bench"], "client-id": client, "duration": 60000});
                let (status, task) = connection.post("/tasks/claim", claim).await;
                match status {
                    200 => {
                        let task: Leased = parse(&task);
                        let report =
                            json!({"client-id": client, "id": task.id, "version": task.version});
                        let (status, answer) = connection.post("/tasks/success", report).await;
                        assert_eq!(status, 200, "{answer:?}");
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Nothing to do yet, as a real worker would see it.
                    204 => tokio::time::sleep(Duration::from_millis(2)).await,
                    other => panic!("claim answered {other}: {task:?}"),
                }
            }
        }));
    }
    for job in jobs {
        job.await.expect("a client finished");
    }
    started.elapsed()
}

/// `BATCHED_TASKS` lifecycles through the batch calls; returns how long until every task
/// succeeded.
async fn batched_lifecycles(base: &str, round: usize) -> Duration {
    let started = Instant::now();
    let mut jobs = Vec::new();
    for s in 0..SUBMITTERS {
        let base = base.to_owned();
        jobs.push(tokio::spawn(async move {
            let mut connection = Connection::open(&base).await;
            for b in 0..BATCHED_TASKS / SUBMITTERS / SUBMIT_BATCH {
                let tasks: Vec<Value> = (0..SUBMIT_BATCH)
                    .map(|i| json!({"cmd": ["run", format!("{round}-{s}-{b}-{i}")], "group": "bench"}))
                    .collect();
                let (status, answer) =
                    connection.post("/tasks/batch/submit", json!({"tasks": tasks})).await;
                assert_eq!(status, 200, "{answer:?}");
                assert_eq!(with_status(&answer, 201), SUBMIT_BATCH, "{answer:?}");
            }
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..WORKERS {
        let (base, done) = (base.to_owned(), done.clone());
        jobs.push(tokio::spawn(async move {
            let mut connection = Connection::open(&base).await;
            let client = format!("batch-worker-{round}-{w}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < BATCHED_TASKS {
                let claim = json!({"groups": ["bench"], "client-id": client, "duration": 60000, "limit": CLAIM_BATCH});
                let (status, answer) = connection.post("/tasks/batch/claim", claim).await;
                assert_eq!(status, 200, "{answer:?}");
                let tasks = parse::<Claimed>(&answer).tasks;
                if tasks.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let reports: Vec<Value> = tasks
                    .iter()
                    .map(|task| json!({"client-id": client, "id": task.id, "version": task.version}))
                    .collect();
                let (status, answer) =
                    connection.post("/tasks/batch/report", json!({"succeeded": reports})).await;
                assert_eq!(status, 200, "{answer:?}");
                let succeeded = with_status(&answer, 200);
                assert_eq!(succeeded, tasks.len(), "{answer:?}");
                done.fetch_add(succeeded, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for job in jobs {
        job.await.expect("a client finished");
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let node = start(
        RunOptions::new("127.0.0.1:0".parse().expect("address")),
        None,
    )
    .expect("a node starts");
    let base = node.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut connection = Connection::open(&base).await;
        // Wait until the node serves its shards.
        loop {
            let (status, _) = connection.post("/groups", json!({"name": "bench"})).await;
            let (probe, _) = connection
                .post(
                    "/tasks/claim",
                    json!({"groups": ["bench"], "client-id": "probe", "duration": 1000}),
                )
                .await;
            if (status == 201 || status == 200) && probe == 204 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut group = c.benchmark_group("task-store");
    group.throughput(Throughput::Elements(TASKS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let mut round = 0;
    group.bench_function("lifecycles-over-http/4-submitters-12-workers", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    round += 1;
                    runtime.block_on(lifecycles(&base, round))
                })
                .sum()
        })
    });
    group.throughput(Throughput::Elements(BATCHED_TASKS as u64));
    group.bench_function(
        "lifecycles-over-http-batched/4-submitters-12-workers",
        |b| {
            b.iter_custom(|iterations| {
                (0..iterations)
                    .map(|_| {
                        round += 1;
                        runtime.block_on(batched_lifecycles(&base, round))
                    })
                    .sum()
            })
        },
    );
    group.finish();
    drop(node);
}

fn main() {
    wellspring_allocator::configure();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}

/// The allocator the `wellspring` binary ships with, so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;
