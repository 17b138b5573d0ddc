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

/// Posts `body`; the status and the body as it came.
async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, bytes::Bytes) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the node answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("a body"))
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
async fn lifecycles(base: &str, http: &reqwest::Client, round: usize) -> Duration {
    let started = Instant::now();
    let mut jobs = Vec::new();
    for s in 0..SUBMITTERS {
        let (http, base) = (http.clone(), base.to_owned());
        jobs.push(tokio::spawn(async move {
            for i in 0..TASKS / SUBMITTERS {
                let body = json!({"cmd": ["run", format!("{round}-{s}-{i}")], "group": "bench"});
                let (status, answer) = post(&http, &format!("{base}/tasks"), body).await;
                assert_eq!(status, 201, "{answer:?}");
            }
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..WORKERS {
        let (http, base, done) = (http.clone(), base.to_owned(), done.clone());
        jobs.push(tokio::spawn(async move {
            let client = format!("worker-{round}-{w}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < TASKS {
                let claim = json!({"groups": ["bench"], "client-id": client, "duration": 60000});
                let (status, task) = post(&http, &format!("{base}/tasks/claim"), claim).await;
                match status {
                    200 => {
                        let task: Leased = parse(&task);
                        let report =
                            json!({"client-id": client, "id": task.id, "version": task.version});
                        let (status, answer) =
                            post(&http, &format!("{base}/tasks/success"), report).await;
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
async fn batched_lifecycles(base: &str, http: &reqwest::Client, round: usize) -> Duration {
    let started = Instant::now();
    let mut jobs = Vec::new();
    for s in 0..SUBMITTERS {
        let (http, base) = (http.clone(), base.to_owned());
        jobs.push(tokio::spawn(async move {
            for b in 0..BATCHED_TASKS / SUBMITTERS / SUBMIT_BATCH {
                let tasks: Vec<Value> = (0..SUBMIT_BATCH)
                    .map(|i| json!({"cmd": ["run", format!("{round}-{s}-{b}-{i}")], "group": "bench"}))
                    .collect();
                let (status, answer) =
                    post(&http, &format!("{base}/tasks/batch/submit"), json!({"tasks": tasks})).await;
                assert_eq!(status, 200, "{answer:?}");
                assert_eq!(with_status(&answer, 201), SUBMIT_BATCH, "{answer:?}");
            }
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..WORKERS {
        let (http, base, done) = (http.clone(), base.to_owned(), done.clone());
        jobs.push(tokio::spawn(async move {
            let client = format!("batch-worker-{round}-{w}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < BATCHED_TASKS {
                let claim = json!({"groups": ["bench"], "client-id": client, "duration": 60000, "limit": CLAIM_BATCH});
                let (status, answer) = post(&http, &format!("{base}/tasks/batch/claim"), claim).await;
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
                    post(&http, &format!("{base}/tasks/batch/report"), json!({"succeeded": reports})).await;
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
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    runtime.block_on(async {
        // Wait until the node serves its shards.
        loop {
            let (status, _) =
                post(&http, &format!("{base}/groups"), json!({"name": "bench"})).await;
            let (probe, _) = post(
                &http,
                &format!("{base}/tasks/claim"),
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
                    runtime.block_on(lifecycles(&base, &http, round))
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
                        runtime.block_on(batched_lifecycles(&base, &http, round))
                    })
                    .sum()
            })
        },
    );
    group.finish();
    drop(node);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
