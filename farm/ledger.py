"""Live job and worker state in Redis: what `farm status`, `farm jobs` and `farm workers` read.

Redis holds only the live picture; the store (images + records) is the truth about what is done,
so a flushed Redis is repaired by `farm resume`, which recounts from the store.

Keys, all under `farm:`:
  jobs                      sorted set: job id -> created time
  job:{id}                  hash: name, store, tasks, images, created_at, status, sheets, ...
                            store_refused: why the store refuses writes for good (disk full ...)
                            backups, discarded, discarded_seconds: backup renders (worker/backups.py)
  job:{id}:done             set of finished task ids (a duplicate delivery adds nothing)
  job:{id}:failed           hash: task id -> reason
  job:{id}:running          hash: task id -> worker name
  job:{id}:held             hash: task id -> JSON {task, store, queue, worker, life, taken, place}: the
                            payload of a task a worker took (when, and its place in the message),
                            kept until its images are stored (for the reaper, and backup renders)
  job:{id}:workers          hash: "{worker}:images" / "{worker}:seconds" -> totals, for images/s
  job:{id}:sheets-claim     set once, by the worker that builds the contact sheets
  worker:{name}             hash with a short TTL, refreshed by each live worker's heartbeat; also
                            `busy` (in a message now) and `speeds` (farm/speeds.py), set per message
  routes                    hash: queue name -> route JSON (farm/messages.py), for workers to choose
  routes-seen               sorted set: queue name -> when a job last queued on it (for pruning)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis

from farm.messages import Route
from farm.tunables import HEARTBEAT_TTL, REAP_CLAIM_TTL, ROUTE_IDLE_SECONDS, SHEETS_CLAIM_TTL

PREFIX = "farm:"

# Marks a task finished (done or failed) and says whether this call saw the job's last task land;
# the SET NX makes sure exactly one caller builds the contact sheets, without Celery chords.
# The worker's images/s totals ride along (one round trip per task, not two).
_FINISH_LUA = """
if tonumber(ARGV[6]) > 0 then
  redis.call('HINCRBY', KEYS[7], ARGV[5] .. ':images', ARGV[6])
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[5] .. ':seconds', ARGV[7])
end
if tonumber(ARGV[8]) > 0 then
  redis.call('HINCRBY', KEYS[7], ARGV[5] .. ':loads', 1)
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[5] .. ':load_seconds', ARGV[8])
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
if ARGV[2] == 'done' then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
elseif redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local total = tonumber(redis.call('HGET', KEYS[4], 'tasks') or '-1')
if total >= 0 and redis.call('SCARD', KEYS[1]) + redis.call('HLEN', KEYS[2]) >= total
   and redis.call('SET', KEYS[5], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return 1
end
return 0
"""

# Forgets a held task only if the same worker life still holds it: a task the reaper re-queued may
# already be held again by the worker that took it next.
_RELEASE_LUA = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and cjson.decode(held)['life'] == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# A backup render takes over a task's hold only if the worker life it chose it from still holds it,
# so two idle workers never back up the same task (worker/backups.py).
_TAKE_OVER_LUA = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and cjson.decode(held)['life'] == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  return 1
end
return 0
"""

# Forgets a route only if its queue is still empty and nothing was queued on it since the cutoff
# (a submit registers its routes before it publishes).
_PRUNE_LUA = """
local seen = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if redis.call('LLEN', KEYS[3]) == 0 and seen <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class BrokerUnreachable(Exception):
    """Redis cannot be reached; the message says where and what to check."""


def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as e:
        raise BrokerUnreachable(
            f"cannot reach Redis at {safe_url(url)} ({e}); is redis-server running there, and are "
            "--broker / FARM_BROKER_URL and the password right?"
        ) from None
    return client


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"


def job_key(job: str, part: str = "") -> str:
    return f"{PREFIX}job:{job}" + (f":{part}" if part else "")


@dataclass
class JobStatus:
    job: str
    info: dict
    done: int
    failed: dict[str, str]
    running: dict[str, str]
    workers: dict[str, dict[str, float]] = field(default_factory=dict)  # worker -> images, seconds, loads, load_seconds

    @property
    def tasks(self) -> int:
        return int(self.info.get("tasks", 0))

    @property
    def queued(self) -> int:
        return max(0, self.tasks - self.done - len(self.failed) - len(self.running))

    @property
    def status(self) -> str:
        return self.info.get("status", "unknown")

    @property
    def sheets(self) -> list[str]:
        return json.loads(self.info.get("sheets", "[]"))


class Ledger:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._finish = client.register_script(_FINISH_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._prune = client.register_script(_PRUNE_LUA)
        self._take_over = client.register_script(_TAKE_OVER_LUA)

    # --- jobs -------------------------------------------------------------------------------
    def register_job(self, job: str, info: dict, done: set[str] = frozenset()) -> None:
        """Create (or, on resume, reset) a job's live state; `done` are task ids already in the store."""
        pipe = self.r.pipeline()
        pipe.zadd(f"{PREFIX}jobs", {job: time.time()}, nx=True)
        pipe.hset(job_key(job), mapping={k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()})
        pipe.hset(job_key(job), "status", "queued")
        pipe.hdel(job_key(job), "sheets", "finished_at", "reason", "store_refused", "backups", "discarded",
                  "discarded_seconds")
        for part in ("done", "failed", "running", "held", "sheets-claim"):
            pipe.delete(job_key(job, part))
        done = list(done)
        for i in range(0, len(done), 10_000):
            pipe.sadd(job_key(job, "done"), *done[i : i + 10_000])
        pipe.execute()

    def job_info(self, job: str) -> dict:
        return self.r.hgetall(job_key(job))

    def jobs(self) -> list[str]:
        return self.r.zrange(f"{PREFIX}jobs", 0, -1)

    def set_status(self, job: str, status: str, **extra: str) -> None:
        self.r.hset(job_key(job), mapping={"status": status, **extra})

    def store_refused(self, job: str, reason: str) -> None:
        """A write to the job's store failed for good (farm/store/failures.py): the job's other
        tasks fail at once instead of rendering images that cannot be stored. Cleared by a resume."""
        if self.r.hsetnx(job_key(job), "store_refused", reason[:500]):
            self.r.hset(job_key(job), "reason", f"{reason[:400]}; fix the store, then `farm resume {job}`")

    def store_refusal(self, job: str) -> str | None:
        """Why the job's store refuses writes, or None."""
        return self.r.hget(job_key(job), "store_refused")

    def job_state(self, job: str) -> tuple[bool, str | None]:
        """(cancelled, why the store refuses writes or None) in one round trip: a worker asks
        between diffusion batches (worker/tasks.py)."""
        status, refused = self.r.hmget(job_key(job), ["status", "store_refused"])
        return status == "cancelled", refused

    def between_batches(self, job: str, queue: str) -> tuple[bool, str | None, int]:
        """job_state and the tasks waiting on `queue` (worker/sharing.py hand_back_now), in one round
        trip: asked before every diffusion batch but a message's first, on the render's path."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(job_key(job), ["status", "store_refused"])
        pipe.llen(queue)
        (status, refused), waiting = pipe.execute()
        return status == "cancelled", refused, waiting

    def failed_count(self, job: str) -> int:
        return self.r.hlen(job_key(job, "failed"))

    def status(self, job: str) -> JobStatus | None:
        info = self.job_info(job)
        if not info:
            return None
        pipe = self.r.pipeline()
        pipe.scard(job_key(job, "done"))
        pipe.hgetall(job_key(job, "failed"))
        pipe.hgetall(job_key(job, "running"))
        pipe.hgetall(job_key(job, "workers"))
        done, failed, running, rates = pipe.execute()
        workers: dict[str, dict[str, float]] = {}
        for k, v in rates.items():
            name, what = k.rsplit(":", 1)
            workers.setdefault(name, {"images": 0, "seconds": 0.0, "loads": 0, "load_seconds": 0.0})[what] = float(v)
        return JobStatus(job, info, done, failed, running, workers)

    # --- tasks (called by workers) ------------------------------------------------------------
    def tasks_started(self, job: str, tasks: list, worker: str, life: str, store_url: str, queue: str) -> None:
        """A worker took a message's tasks (farm/task.py RenderTasks): mark them running and hold
        their payloads until their images are stored, so that they can be re-queued if this
        worker life ends first (reap)."""
        now = time.time()
        held = {t.id: json.dumps({"task": t.model_dump(), "store": store_url, "queue": queue,
                                  "worker": worker, "life": life, "taken": now, "place": i})
                for i, t in enumerate(tasks)}
        pipe = self.r.pipeline()
        pipe.hset(job_key(job, "running"), mapping={t.id: worker for t in tasks})
        pipe.hset(job_key(job, "held"), mapping=held)
        pipe.hsetnx(job_key(job), "started_at", str(time.time()))
        pipe.hget(job_key(job), "status")
        if pipe.execute()[-1] == "queued":  # the job's first message only: a second round trip
            self.r.hset(job_key(job), "status", "running")

    def orphans(self) -> list[tuple[str, str, dict]]:
        """(job, task id, held payload) of tasks held by a worker life that no longer beats: a PC
        switched off or a worker killed, after or before its message was acked."""
        lives = {w.get("name"): w.get("life") for w in self.workers()}
        jobs = self.jobs()
        pipe = self.r.pipeline()
        for job in jobs:
            pipe.hget(job_key(job), "status")
        live_jobs = [job for job, status in zip(jobs, pipe.execute()) if status in ("queued", "running")]
        found = []
        for job in live_jobs:
            for task_id, raw in self.r.hgetall(job_key(job, "held")).items():
                held = json.loads(raw)
                if lives.get(held["worker"]) != held["life"]:
                    found.append((job, task_id, held))
        return found

    def claim_orphan(self, job: str, task_id: str) -> bool:
        """True for one caller per task (per REAP_CLAIM_TTL): that one re-queues it."""
        return bool(self.r.set(f"{job_key(job, 'reap')}:{task_id}", "1", nx=True, ex=REAP_CLAIM_TTL))

    def held_by(self, job: str, task_ids: list[str], life: str) -> set[str]:
        """Which of these tasks this worker life still holds (a backup render may have taken one over)."""
        if not task_ids:
            return set()
        raws = self.r.hmget(job_key(job, "held"), task_ids)
        return {t for t, raw in zip(task_ids, raws) if raw and json.loads(raw).get("life") == life}

    def held_tasks(self) -> list[tuple[str, str, dict]]:
        """(job, task id, held payload) of every task held now, in queued and running jobs."""
        jobs = self.jobs()
        pipe = self.r.pipeline()
        for job in jobs:
            pipe.hget(job_key(job), "status")
        found = []
        for job, status in zip(jobs, pipe.execute()):
            if status in ("queued", "running"):
                found += [(job, t, json.loads(raw)) for t, raw in self.r.hgetall(job_key(job, "held")).items()]
        return found

    def take_over(self, job: str, task_id: str, from_life: str, held: dict) -> bool:
        """A backup render holds the task from now on (its payload `held`), if the life it was chosen
        from still holds it; True for exactly one taker."""
        keys = [job_key(job, "held"), job_key(job, "running")]
        return bool(self._take_over(keys=keys, args=[task_id, from_life, json.dumps(held), held["worker"]]))

    def count_backups(self, job: str, tasks: int) -> None:
        self.r.hincrby(job_key(job), "backups", tasks)

    def count_discarded(self, job: str, images: int, seconds: float) -> None:
        """Images rendered twice (a backup and its original) whose copy was not stored: the other won."""
        pipe = self.r.pipeline()
        pipe.hincrby(job_key(job), "discarded", images)
        pipe.hincrbyfloat(job_key(job), "discarded_seconds", seconds)
        pipe.execute()

    def release_orphan(self, job: str, task_id: str, life: str) -> bool:
        """After re-queueing: forget the dead life's hold (unless another worker holds it now)."""
        keys = [job_key(job, "held"), job_key(job, "running")]
        return bool(self._release(keys=keys, args=[task_id, life]))

    def depot_wait_since(self, job: str, task_id: str, bound: float) -> float:
        """When this task first found the model depot unreachable (worker/model_cache.py
        depot_wait): the start of its bounded wait, kept twice the bound."""
        key = f"{job_key(job, 'depot-wait')}:{task_id}"
        self.r.set(key, str(time.time()), nx=True, ex=max(1, int(2 * bound)))
        return float(self.r.get(key) or time.time())

    def task_finished(self, job: str, task_id: str, worker: str, images: int = 0, seconds: float = 0.0,
                      failed: str | None = None, load_seconds: float = 0.0) -> bool:
        """Record a finished task; True for exactly one caller, when the job's last task lands.
        `load_seconds` > 0 when the task had to load its checkpoint first."""
        keys = [job_key(job, "done"), job_key(job, "failed"), job_key(job, "running"), job_key(job),
                job_key(job, "sheets-claim"), job_key(job, "held"), job_key(job, "workers")]
        outcome = "failed" if failed is not None else "done"
        return bool(self._finish(keys=keys, args=[task_id, outcome, failed or "", SHEETS_CLAIM_TTL, worker,
                                                  images, repr(float(seconds)), repr(float(load_seconds))]))

    # --- routes ---------------------------------------------------------------------------------
    def register_routes(self, routes: list[Route]) -> None:
        if routes:
            pipe = self.r.pipeline()
            pipe.hset(f"{PREFIX}routes", mapping={r.queue: r.to_json() for r in routes})
            pipe.zadd(f"{PREFIX}routes-seen", {r.queue: time.time() for r in routes})
            pipe.execute()

    def prune_routes(self, idle_seconds: float = ROUTE_IDLE_SECONDS) -> list[str]:
        """Forget routes whose queue is empty and on which nothing was queued for idle_seconds, so
        that a long-lived farm's list of routes (every priority x checkpoint x size x tags ever
        used) does not grow without end. Returns the queue names forgotten."""
        stale = self.r.zrangebyscore(f"{PREFIX}routes-seen", "-inf", time.time() - idle_seconds)
        routes = [f"{PREFIX}routes", f"{PREFIX}routes-seen"]
        cutoff = time.time() - idle_seconds
        return [q for q in stale if self._prune(keys=[*routes, q], args=[q, cutoff])]

    def routes(self) -> dict[str, Route]:
        return {q: Route.from_json(v) for q, v in self.r.hgetall(f"{PREFIX}routes").items()}

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        """Tasks waiting in each queue (kombu keeps a Redis list per queue, under its name)."""
        pipe = self.r.pipeline()
        for q in queues:
            pipe.llen(q)
        return dict(zip(queues, pipe.execute()))

    # --- workers ------------------------------------------------------------------------------
    def heartbeat(self, name: str, info: dict) -> None:
        key = f"{PREFIX}worker:{name}"
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={**{k: str(v) for k, v in info.items()}, "last_seen": str(time.time())})
        pipe.expire(key, HEARTBEAT_TTL)
        pipe.execute()

    def announce(self, name: str, checkpoint: str, next_checkpoint: str, queues: list[str]) -> None:
        """A worker's loaded checkpoint, where it goes next and the queues it reads, for the
        others' queue order (worker/queue_order.py)."""
        key = f"{PREFIX}worker:{name}"
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={"name": name, "checkpoint": checkpoint, "next": next_checkpoint,
                                "queues": json.dumps(queues)})
        pipe.expire(key, HEARTBEAT_TTL)
        pipe.execute()

    def set_busy(self, name: str, busy: bool, speeds: str | None = None) -> None:
        """A worker starts or ends a message (and, at its end, its measured speeds): fresher than
        the heartbeat, for the others' hand-back and backup decisions (worker/sharing.py)."""
        key = f"{PREFIX}worker:{name}"
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={"busy": "1" if busy else "0", **({"speeds": speeds} if speeds else {})})
        pipe.expire(key, HEARTBEAT_TTL)
        pipe.execute()

    def request_pause(self, name: str, reason: str) -> None:
        """`farm worker pause NAME`: the worker takes no new task until `resume` (worker/pause.py).
        Kept without expiry, so that it holds across the worker's restarts."""
        self.r.set(f"{PREFIX}pause:{name}", reason)

    def clear_pause(self, name: str) -> bool:
        return bool(self.r.delete(f"{PREFIX}pause:{name}"))

    def pause_request(self, name: str) -> str | None:
        return self.r.get(f"{PREFIX}pause:{name}")

    def forget_worker(self, name: str) -> None:
        self.r.delete(f"{PREFIX}worker:{name}")

    def workers(self) -> list[dict]:
        """Every live worker's hash. Asked per message (worker/sharing.py), so two round trips at
        most, not one per worker: SCAN in large steps (the default 10 keys a step takes dozens on a
        farm's keyspace), then all the hashes in one pipeline."""
        keys = sorted(self.r.scan_iter(f"{PREFIX}worker:*", count=1000))
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [info for info in pipe.execute() if info]  # one that expired since the SCAN: gone
