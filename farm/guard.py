"""The worker's message guard: what a worker accepts from its queues, and the dead-letter list for
everything else.

Anyone who can write to Redis can put anything on a farm queue. Celery decodes a message inside
its event loop, and a message that is not JSON, whose body is not base64, or whose envelope lacks
a key stops the whole worker ("Unrecoverable error"). So every raw message a worker pops is first
checked here, as bytes, before Celery sees it (farm/transport.py calls `inspect_message`): its size,
the kombu envelope, the Celery body, the task name, each RenderTask against the contract (schema
version, content id) and the store it names against the worker's trusted stores. A message that
fails is already off the queue (BRPOP took it); it goes to the dead-letter list `farm:dead` with
the queue and the reason, the worker logs one line and reads the next message.

Pure functions over bytes: the property tests (tests/test_guard.py) feed it anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Callable

from farm.celery_app import REFRESH_TASK, RENDER_TASK
from farm.tunables import DEAD_LETTER_HEAD, DEAD_LETTERS_KEPT, MAX_GROUP, MAX_MESSAGE_BYTES

DEAD_LETTERS = "farm:dead"


@dataclass(frozen=True)
class Policy:
    """What this worker accepts. `trusted_store(url)` answers whether it may write into a store."""

    max_bytes: int = MAX_MESSAGE_BYTES
    trusted_store: Callable[[str], bool] = field(default=lambda url: True)


class Refused(Exception):
    """Why a message is not rendered: one line."""


def _json(text: str | bytes, what: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise Refused(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(f"{what} is not JSON ({type(e).__name__})") from None


def _need(condition: bool, reason: str) -> None:
    if not condition:
        raise Refused(reason)


def decode_envelope(raw: bytes | str, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[dict, str, list]:
    """kombu's Redis envelope -> (envelope, task name, Celery body [args, kwargs, embed]).
    Raises Refused."""
    size = len(raw)
    _need(size <= max_bytes, f"message of {size} bytes is over the limit of {max_bytes} bytes")
    envelope = _json(raw, "message")
    _need(isinstance(envelope, dict), "message is not a JSON object")
    props, headers = envelope.get("properties"), envelope.get("headers")
    _need(isinstance(props, dict), "message has no 'properties' object")
    _need(isinstance(props.get("delivery_tag"), str), "message has no delivery tag")
    _need(isinstance(props.get("delivery_info", {}), dict), "message's delivery_info is not an object")
    _need(props.get("body_encoding") == "base64", "message body is not base64-encoded")
    _need(envelope.get("content-type") == "application/json", "message content type is not application/json")
    _need(isinstance(headers, dict), "message has no 'headers' object")
    name = headers.get("task")
    _need(name in (RENDER_TASK, REFRESH_TASK), f"unknown task {str(name)[:80]!r}")
    _need(isinstance(headers.get("id"), str), "message has no task id")
    body = envelope.get("body")
    _need(isinstance(body, str), "message body is not a string")
    try:
        decoded = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Refused("message body is not valid base64") from None
    payload = _json(decoded, "message body")
    _need(isinstance(payload, list) and len(payload) == 3, "message body is not Celery's [args, kwargs, embed]")
    args, kwargs, embed = payload
    _need(isinstance(args, list) and isinstance(kwargs, dict) and isinstance(embed, dict),
          "message body is not Celery's [args, kwargs, embed]")
    return envelope, name, payload


def inspect_message(raw: bytes | str, policy: Policy = Policy()) -> str | None:
    """None if the worker may run this raw queue message, else the reason (one line). Never raises."""
    from farm.task import TASK_SCHEMA_VERSION, RenderTask

    try:
        _, name, (args, kwargs, _) = decode_envelope(raw, policy.max_bytes)
        if name == REFRESH_TASK:
            _need(not args and not kwargs, "refresh message with arguments")
            return None
        _need(not kwargs and len(args) == 2, "render message needs exactly [tasks, store]")
        tasks, store = args
        _need(isinstance(tasks, list) and 1 <= len(tasks) <= MAX_GROUP,
              f"render message needs 1 to {MAX_GROUP} tasks")
        _need(isinstance(store, str) and 0 < len(store) <= 2048, "render message has no store URL")
        jobs = set()
        for data in tasks:
            _need(isinstance(data, dict), "a task is not a JSON object")
            version = data.get("v", TASK_SCHEMA_VERSION)
            _need(version == TASK_SCHEMA_VERSION,
                  f"task schema version {str(version)[:20]} (this worker reads {TASK_SCHEMA_VERSION})")
            try:
                task = RenderTask.from_json(data)
            except ValueError as e:  # pydantic's ValidationError
                first = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
                where = ".".join(map(str, first["loc"])) or "task"
                raise Refused(f"invalid task: {where}: {first['msg']}"[:300]) from None
            _need(task.id == task.content_id(), f"task {task.id[:40]!r} does not match its content")
            jobs.add(task.job)
        _need(len(jobs) == 1, "a message's tasks belong to different jobs")
        if not policy.trusted_store(store):
            return f"store {safe_store(store)} is not one this worker trusts (--store / trusted_stores)"
        return None
    except Refused as e:
        return str(e)
    except Exception as e:  # a bug here must dead-letter the message, never stop the worker
        return f"message could not be checked ({type(e).__name__})"


def safe_store(url: str) -> str:
    """A store URL for a log line: short, query (which may hold an endpoint) kept, no control chars."""
    text = "".join(ch if ch.isprintable() else "?" for ch in url[:200])
    return text + ("..." if len(url) > 200 else "")


def dead_letter(client, queue: str, reason: str, raw: bytes | str) -> None:
    """Keep a refused message's head, its queue and the reason in `farm:dead` (newest first, capped)."""
    head = raw[:DEAD_LETTER_HEAD]
    if isinstance(head, bytes):
        head = head.decode("utf-8", "replace")
    entry = json.dumps({"time": time.time(), "queue": queue, "reason": reason, "bytes": len(raw), "head": head})
    with client.pipeline() as pipe:
        pipe.lpush(DEAD_LETTERS, entry)
        pipe.ltrim(DEAD_LETTERS, 0, DEAD_LETTERS_KEPT - 1)
        pipe.execute()


def dead_letters(client, limit: int = 100) -> list[dict]:
    """The newest dead letters, newest first."""
    out = []
    for item in client.lrange(DEAD_LETTERS, 0, limit - 1):
        try:
            out.append(json.loads(item))
        except ValueError:
            continue
    return out


def dead_letter_count(client) -> int:
    return int(client.llen(DEAD_LETTERS))
