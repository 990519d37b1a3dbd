"""kombu's Redis transport with the message guard (farm/guard.py) in front of Celery.

kombu pops a raw message with BRPOP and decodes it inside the worker's event loop; an exception
there stops the worker. The two places that pop a message (`_brpop_read`, the event-loop path, and
`_get`, the polling path) are kombu's own code plus one check: a raw message the guard refuses is
pushed to the dead-letter list, logged in one line, and the channel reports "nothing here"
(`Empty`), so the worker goes on with the next message. The policy travels in the broker transport
options under `farm_policy` (farm/celery_app.py `make_app(policy=...)`).

Only the worker uses this transport; `farm submit` publishes through kombu's plain one.
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from farm.guard import Policy, dead_letter, inspect_message

log = logging.getLogger("seedfarm.worker")
Empty = kombu_redis.Empty


class Channel(kombu_redis.Channel):
    @property
    def farm_policy(self) -> Policy:
        return self.connection.client.transport_options.get("farm_policy") or Policy()

    def _accept(self, queue: str, item: bytes) -> bool:
        reason = inspect_message(item, self.farm_policy)
        if reason is None:
            return True
        log.error("dead letter from queue %s: %s", queue, reason)
        try:
            with self.conn_or_acquire() as client:
                dead_letter(client, queue, reason, item)
        except Exception as e:  # the log line stays; the message is off the queue either way
            log.warning("could not keep the dead letter in Redis: %s", e)
        return False

    def _brpop_read(self, **options):  # kombu 5.5-5.7's body, with the guard before _deliver
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                if not self._accept(dest, item):
                    raise Empty()
                self.connection._deliver(loads(bytes_to_str(item)), dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def _get(self, queue):
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    getattr(self, "_maybe_update_queues_expire", lambda *_: None)(client, queue)  # kombu >= 5.6
                    if not self._accept(queue, item):
                        raise Empty()
                    return loads(bytes_to_str(item))
            getattr(self, "_maybe_update_queues_expire", lambda *_: None)(client, queue)  # kombu >= 5.6
            raise Empty()


    def _deliver_fanout_message(self, message, exchange):
        """Remote-control broadcasts (pub/sub): kombu already drops what is not JSON; a JSON message
        that is not an envelope would stop the worker in Message(), so it is dropped here too."""
        try:
            self.Message(message, channel=self)
        except Exception as e:
            log.error("dropped a broadcast on %s: not a message (%s)", exchange, type(e).__name__)
            raise Empty() from None
        return super()._deliver_fanout_message(message, exchange)


# Remote-control commands a worker answers: none that changes it (shutdown, pool_restart,
# add_consumer, revoke, rate_limit ...). seedfarm steers queues itself (worker/steering.py).
ALLOWED_CONTROL = frozenset({"ping"})


def restrict_remote_control() -> None:
    from celery.worker.control import Panel

    for name in list(Panel.data):
        if name not in ALLOWED_CONTROL:
            del Panel.data[name]
            Panel.meta.pop(name, None)


class Transport(kombu_redis.Transport):
    Channel = Channel
