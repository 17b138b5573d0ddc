"""The Celery peer's client: task lifecycles per second with Celery on Redis.

A lifecycle is a task submitted (apply_async: the message on the Redis broker), picked up
by a worker, run (it does nothing), its success recorded in the Redis result backend, and
read back by the client that submitted it. It is what Wellspring's task_store bench
(nodes/benches/task_store.rs, task-store/lifecycles-over-http/4-submitters-12-workers)
measures: there 4 submitters POST tasks while 12 workers claim them and report success,
all against one node that keeps the tasks; here the same 4 submitters, each a process of
its own, submit their share of --tasks at the same time and then wait for their own
results, while one Celery worker (prefork pool, one process per core, started by
scripts/bench-peers with Celery's default prefetching) claims and runs them; Redis, in
memory and without persistence, plays the task store. Unlike Wellspring's node, Redis
here does not make a task durable before it answers.

The clock runs from the moment all submitters start (a barrier) until the last of them
has read back its last result: the figure is --tasks / that time. Before it, untimed,
200 tasks warm up the worker's pool and connections. After it, every task's state is read
once more and must be SUCCESS with the right result, and the results must number exactly
--tasks; otherwise the client fails, naming what it found.
"""

import argparse
import multiprocessing
import queue as queues
import sys
import time
from collections import Counter

import celery
from celery.result import ResultSet

from tasks import app, noop

SUBMITTERS = 4  # as Wellspring's task_store bench
WARM_UP = 200  # untimed: the worker's pool forks, connections and imports are made


def log(message):
    print(f"celery: {message}", file=sys.stderr, flush=True)


def fail(message):
    log(f"FAILED: {message}")
    sys.exit(1)


def lifecycles(first, n):
    """Submits n tasks and waits for all their results; returns (results, values, when all were submitted)."""
    results = [noop.apply_async((i,)) for i in range(first, first + n)]
    submitted = time.monotonic()
    values = ResultSet(results).join_native(timeout=max(600, n / 10), propagate=True)
    return results, values, submitted


def check(results, values, first, n):
    """What is wrong with a submitter's results, or None."""
    wrong = [(i, v) for i, v in enumerate(values, first) if v != {"ok": True, "i": i}]
    states = Counter(r.state for r in results)  # one GET per task
    if len(results) != n or len(values) != n or wrong or states != Counter({"SUCCESS": n}):
        return (
            f"{len(results)} tasks and {len(values)} results for {n} submitted, {len(wrong)} of them "
            f"wrong (e.g. {wrong[:1]}), task states {dict(states)}"
        )
    return None


def submitter(index, first, n, barrier, out):
    """One submitter process: its own connections, then its n lifecycles, timed."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
        app.backend.client.ping()
        barrier.wait(timeout=60)
        start = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
        results, values, submitted = lifecycles(first, n)
        end = time.monotonic()
        log(f"submitter {index}: {n} submitted in {submitted - start:.2f} s, all their results in after {end - start:.2f} s")
        out.put((index, start, end, n, check(results, values, first, n)))
    except Exception as e:  # reported by the parent, which fails the run
        out.put((index, None, None, n, f"{type(e).__name__}: {e}"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--worker-processes", type=int, default=2, help="for the result line only")
    args = parser.parse_args()
    n = args.tasks
    if n < SUBMITTERS:
        fail(f"--tasks must be at least {SUBMITTERS}, one per submitter")

    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=1.0):
        if time.monotonic() > deadline:
            fail("no Celery worker answered a ping within 60 s")
    log(f"worker up; warming up with {WARM_UP} tasks")
    results, values, _ = lifecycles(-WARM_UP, WARM_UP)
    problem = check(results, values, -WARM_UP, WARM_UP)
    if problem:
        fail(f"warm-up: {problem}")

    # Fresh interpreters (spawn), not forks of this one and its open connections.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(SUBMITTERS)
    out = context.Queue()
    shares = [n // SUBMITTERS + (1 if s < n % SUBMITTERS else 0) for s in range(SUBMITTERS)]
    firsts = [sum(shares[:s]) for s in range(SUBMITTERS)]
    processes = [
        context.Process(target=submitter, args=(s, firsts[s], shares[s], barrier, out), daemon=True)
        for s in range(SUBMITTERS)
    ]
    log(f"{SUBMITTERS} submitters submitting {n} tasks in all ({', '.join(map(str, shares))})")
    for p in processes:
        p.start()
    reports = []
    try:
        for _ in processes:
            reports.append(out.get(timeout=max(900, n / 10)))
    except queues.Empty:
        fail(f"only {len(reports)} of {SUBMITTERS} submitters reported in time")
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    problems = [f"submitter {i}: {problem}" for i, _, _, _, problem in sorted(reports) if problem]
    if problems:
        fail("; ".join(problems))
    done = sum(r[3] for r in reports)
    if done != n:
        fail(f"{done} lifecycles completed and checked, expected exactly {n}")
    seconds = max(r[2] for r in reports) - min(r[1] for r in reports)
    log(f"{done} lifecycles in {seconds:.2f} s; every task SUCCESS with its result, read back by its submitter")

    redis_version = app.backend.client.info()["redis_version"]
    print(
        f"peer=celery figure=lifecycles_per_s value={n / seconds:.0f} tasks={n} seconds={seconds:.2f} "
        f'note="Celery {celery.__version__}, Redis {redis_version} (in memory, no persistence) as broker and backend, '
        f"{SUBMITTERS} submitter processes, one prefork worker of concurrency {args.worker_processes}, "
        f'{WARM_UP} untimed warm-up tasks first"',
        flush=True,
    )


if __name__ == "__main__":
    main()
