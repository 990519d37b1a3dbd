"""The Celery application shared by `farm submit` (producer) and `farm worker` / `farm run` (consumers).

Only the task *name* lives here; its body is worker/tasks.py, registered by the worker process, so
the coordinator never imports torch. JSON on the wire only: pickle would let anyone who can write
to Redis run code on every PC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from farm.tunables import DEFAULT_RESTORE_INTERVAL, DEFAULT_VISIBILITY_TIMEOUT

if TYPE_CHECKING:
    from farm.guard import Policy

RENDER_TASK = "seedfarm.render"
# A no-op sent to a worker's own queue: it wakes the worker's blocking read at once, and the worker
# re-reads the routes after it (worker/steering.py). Sent when new work is queued.
REFRESH_TASK = "seedfarm.refresh"


def make_app(broker_url: str = "memory://", visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
             restore_interval: float = DEFAULT_RESTORE_INTERVAL, policy: "Policy | None" = None) -> Celery:
    """The Celery app. See farm/tunables.py for why the visibility timeout is what it is.

    A worker passes its `policy` (farm/guard.py): it then reads its queues through the guarded
    transport (farm/transport.py), which dead-letters any message it may not run, and answers only
    the `ping` remote-control command (anyone who can write to Redis could send `shutdown`). Remote
    control itself stays on: without its pub/sub consumer a solo worker did not notice a Redis
    restart and stopped consuming for good (benchmarks/faults.py, redis-restart-aof)."""
    app = Celery("seedfarm", broker=broker_url)
    transport = {
        "visibility_timeout": visibility_timeout,
        # kombu >= 5.7: look for tasks of dead workers every `restore_interval` seconds, not
        # every ~100 s, so a switched-off PC's task is back on the queue soon after the timeout.
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1,
        # Read queues in the order the worker gives them (worker/queue_order.py), not round-robin.
        "queue_order_strategy": "priority",
        # Priority lives in queue names, not in message priorities: one BRPOP key per queue.
        "priority_steps": [0],
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
    if policy is not None:
        transport["farm_policy"] = policy
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A render is acked only after its image and record are in the store, and a worker holds
        # at most one task it has not started: a PC switched off loses nothing and hoards nothing.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport,
        visibility_timeout=visibility_timeout,
        # Results are tiny records in our own ledger; the store holds the images.
        task_ignore_result=True,
        task_default_queue="seedfarm",
        worker_hijack_root_logger=False,
    )
    if policy is not None:
        from farm.transport import restrict_remote_control

        app.conf.update(broker_transport="farm.transport:Transport")
        restrict_remote_control()
    return app
