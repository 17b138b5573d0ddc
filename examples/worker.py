#!/usr/bin/env python3
"""A Wellspring task-store worker, using only the HTTP API and Python's standard library.

It claims a task of a group, runs the task's command (`cmd`) as a subprocess, extends its
lease while the command runs, and reports success (exit code 0, with the command's output)
or failure (with the end of its error output). Losing the lease (the API answers 409: it
expired and another worker has the task) stops the command: someone else owns the task now.

    python3 examples/worker.py --url http://127.0.0.1:8080 --group "Group A"

Options: --client-id (default: host and pid), --lease SECONDS (default 30), --parallel N
(run up to N tasks at once, default 1), --exit-when-empty (stop when no task is available
instead of waiting), --no-batch (only the reference calls). A bearer token is read from the
WELLSPRING_API_TOKEN environment variable when the API needs one.

When the server offers the batch calls (`/tasks/batch/claim` and `/tasks/batch/report`),
the worker claims up to N tasks in one call and reports those that finish together in one
call; a server without them answers 404, and the worker then uses the reference calls,
one task per call.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


class Api:
    def __init__(self, url, token=None):
        self.url = url.rstrip("/")
        self.token = token

    def post(self, path, body):
        """POSTs JSON; returns (status, decoded JSON or None)."""
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"error": raw.decode(errors="replace")}


class Lease:
    """Keeps a task's lease alive in the background; tells when it is lost."""

    def __init__(self, api, client_id, task, seconds):
        self.api, self.client_id, self.seconds = api, client_id, seconds
        self.id, self.version = task["id"], task["version"]
        self.lost = threading.Event()
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        # Extend well before the lease runs out.
        while not self.stopped.wait(self.seconds / 3):
            with self.lock:
                status, answer = self.api.post("/tasks/extend-claim", {
                    "client-id": self.client_id, "duration": int(self.seconds * 1000),
                    "id": self.id, "version": self.version})
                if status == 200:
                    self.version = answer["version"]
                elif status == 409:
                    print(f"lease of {self.id} lost: {answer.get('error')}", file=sys.stderr)
                    self.lost.set()
                    return
                # Other answers (a node restarting) are retried at the next beat.

    def finish(self):
        """Stops extending; returns the version to report with."""
        self.stopped.set()
        self.thread.join()
        with self.lock:
            return self.version


def work(api, client_id, task, lease_seconds):
    """Runs a task under its lease. Returns (success, report), or None when the lease was
    lost (someone else owns the task now: nothing to report)."""
    lease = Lease(api, client_id, task, lease_seconds)
    started = time.monotonic()
    try:
        # A traced task carries its W3C trace context: the command continues the trace
        # (OpenTelemetry SDKs read TRACEPARENT from the environment).
        env = dict(os.environ)
        if task.get("traceparent"):
            env["TRACEPARENT"] = task["traceparent"]
        process = subprocess.Popen(task["cmd"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError as error:
        version = lease.finish()
        return False, {"client-id": client_id, "id": task["id"], "version": version,
                       "error": f"cannot run {task['cmd'][0]}: {error}"}
    while process.poll() is None:
        if lease.lost.wait(0.1):
            process.kill()
            process.wait()
            lease.finish()
            return None
    stdout, stderr = process.communicate()
    version = lease.finish()
    elapsed_ms = int((time.monotonic() - started) * 1000)
    report = {"client-id": client_id, "id": task["id"], "version": version, "elapsed-time": elapsed_ms}
    if process.returncode == 0:
        report["output"] = {"exit-code": 0, "stdout": stdout[-4096:]}
        return True, report
    report["error"] = f"exit code {process.returncode}: {stderr[-1024:].strip()}"
    return False, report


class Worker:
    """Claims, runs and reports; through the batch calls while the server offers them."""

    def __init__(self, api, groups, client_id, lease_seconds, parallel, batch):
        self.api, self.groups, self.client_id = api, groups, client_id
        self.lease_seconds, self.parallel, self.batch = lease_seconds, parallel, batch
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)

    def claim(self):
        """Returns (status, tasks): 200 with the tasks leased, 204 with none."""
        claim = {"groups": self.groups, "client-id": self.client_id,
                 "duration": int(self.lease_seconds * 1000)}
        if self.batch:
            status, answer = self.api.post("/tasks/batch/claim", dict(claim, limit=self.parallel))
            if status == 404:
                print("the server has no batch calls; using the reference calls", file=sys.stderr)
                self.batch = False
            elif status == 200:
                tasks = answer["tasks"]
                if tasks:
                    print(f"claimed {len(tasks)} task(s) in one batch call")
                return (200 if tasks else 204), tasks
            else:
                return status, answer
        tasks = []
        # Without batches, one claim per task, up to `parallel` of them.
        while len(tasks) < self.parallel:
            status, task = self.api.post("/tasks/claim", claim)
            if status != 200:
                if tasks:
                    break
                return status, task
            tasks.append(task)
        return 200, tasks

    def report(self, finished):
        """Reports (task, success, report) triples; returns (task, outcome) pairs."""
        if self.batch:
            succeeded = [report for _, success, report in finished if success]
            failed = [report for _, success, report in finished if not success]
            status, answer = self.api.post("/tasks/batch/report", {"succeeded": succeeded, "failed": failed})
            if status == 200:
                # Answered in the order sent: the successes, then the failures.
                ordered = [f for f in finished if f[1]] + [f for f in finished if not f[1]]
                return [(task, result["status"] if "error" not in result else result["error"])
                        for (task, _, _), result in zip(ordered, answer["results"])]
            return [(task, answer.get("error") if answer else status) for task, _, _ in finished]
        outcomes = []
        for task, success, report in finished:
            status, answer = self.api.post("/tasks/success" if success else "/tasks/failure", report)
            outcomes.append((task, 200 if status == 200 else answer.get("error")))
        return outcomes

    def run_batch(self, tasks):
        """Runs the tasks at once; reports those that finished together, as they finish
        (a finished task's lease is no longer extended, so it is reported at once)."""
        running = {self.pool.submit(work, self.api, self.client_id, task, self.lease_seconds): task
                   for task in tasks}
        while running:
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            finished = []
            for run in done:
                task = running.pop(run)
                result = run.result()
                if result is not None:
                    finished.append((task, result[0], result[1]))
            for task, outcome in self.report(finished) if finished else []:
                shown = "reported" if outcome == 200 else outcome
                print(f"task {task['id']} ({' '.join(task['cmd'])}): {shown}")


def main():
    parser = argparse.ArgumentParser(description="A Wellspring task-store worker")
    parser.add_argument("--url", default=os.environ.get("WELLSPRING_URL", "http://127.0.0.1:8080"))
    # A worker Job started by the autoscaler finds its group in WELLSPRING_GROUP.
    groups_from_env = [g for g in os.environ.get("WELLSPRING_GROUP", "").split(",") if g]
    parser.add_argument("--group", action="append", default=None,
                        help="a group to claim from (repeatable; default: WELLSPRING_GROUP, comma-separated)")
    parser.add_argument("--client-id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=30.0, help="lease length in seconds")
    parser.add_argument("--exit-when-empty", action="store_true")
    parser.add_argument("--parallel", type=int, default=1, help="tasks run at once")
    parser.add_argument("--no-batch", action="store_true", help="only the reference calls")
    args = parser.parse_args()

    args.group = args.group or groups_from_env
    if not args.group:
        parser.error("give --group, or set WELLSPRING_GROUP")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    api = Api(args.url, os.environ.get("WELLSPRING_API_TOKEN"))
    worker = Worker(api, args.group, args.client_id, args.lease, args.parallel, not args.no_batch)
    idle = 0.5
    while True:
        try:
            status, tasks = worker.claim()
        except (urllib.error.URLError, OSError) as error:
            print(f"cannot reach {args.url}: {error}; retrying", file=sys.stderr)
            time.sleep(idle)
            continue
        if status == 204:
            if args.exit_when_empty:
                return 0
            time.sleep(idle)
            continue
        if status != 200:
            print(f"claim refused ({status}): {tasks.get('error') if tasks else ''}", file=sys.stderr)
            if status in (400, 401, 404):
                return 1
            time.sleep(idle)
            continue
        worker.run_batch(tasks)


if __name__ == "__main__":
    sys.exit(main())
