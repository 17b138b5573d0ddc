#!/usr/bin/env python3
"""A Wellspring task-store worker, using only the HTTP API and Python's standard library.

It claims a task of a group, runs the task's command (`cmd`) as a subprocess, extends its
lease while the command runs, and reports success (exit code 0, with the command's output)
or failure (with the end of its error output). Losing the lease (the API answers 409: it
expired and another worker has the task) stops the command: someone else owns the task now.

    python3 examples/worker.py --url http://127.0.0.1:8080 --group "Group A"

Options: --client-id (default: host and pid), --lease SECONDS (default 30), --exit-when-empty
(stop when no task is available instead of waiting). A bearer token is read from the
WELLSPRING_API_TOKEN environment variable when the API needs one.
"""

import argparse
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
        return api.post("/tasks/failure", {"client-id": client_id, "id": task["id"], "version": version,
                                           "error": f"cannot run {task['cmd'][0]}: {error}"})
    while process.poll() is None:
        if lease.lost.wait(0.1):
            process.kill()
            process.wait()
            lease.finish()
            return None, None
    stdout, stderr = process.communicate()
    version = lease.finish()
    elapsed_ms = int((time.monotonic() - started) * 1000)
    report = {"client-id": client_id, "id": task["id"], "version": version, "elapsed-time": elapsed_ms}
    if process.returncode == 0:
        report["output"] = {"exit-code": 0, "stdout": stdout[-4096:]}
        return api.post("/tasks/success", report)
    report["error"] = f"exit code {process.returncode}: {stderr[-1024:].strip()}"
    return api.post("/tasks/failure", report)


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
    args = parser.parse_args()

    args.group = args.group or groups_from_env
    if not args.group:
        parser.error("give --group, or set WELLSPRING_GROUP")
    api = Api(args.url, os.environ.get("WELLSPRING_API_TOKEN"))
    idle = 0.5
    while True:
        try:
            status, task = api.post("/tasks/claim", {"groups": args.group, "client-id": args.client_id,
                                                     "duration": int(args.lease * 1000)})
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
            print(f"claim refused ({status}): {task.get('error') if task else ''}", file=sys.stderr)
            if status in (400, 401, 404):
                return 1
            time.sleep(idle)
            continue
        status, answer = work(api, args.client_id, task, args.lease)
        if status is None:
            continue
        outcome = answer.get("status") if status == 200 else answer.get("error")
        print(f"task {task['id']} ({' '.join(task['cmd'])}): {outcome}")


if __name__ == "__main__":
    sys.exit(main())
