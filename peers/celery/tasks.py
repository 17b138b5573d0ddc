"""The Celery app that the worker and the client both load: Redis (PEERS_REDIS_URL) as
broker and result backend, JSON messages, and one task that does nothing."""

import os

from celery import Celery

url = os.environ["PEERS_REDIS_URL"]
app = Celery("peers", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="peers.noop")
def noop(i):
    # No work and a small result: what is measured is Celery's and Redis' share of a
    # lifecycle (submit, claim, success recorded), as in Wellspring's task_store bench.
    return {"ok": True, "i": i}
