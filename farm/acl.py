"""Redis ACL users for the farm's roles, printed by `farm redis-acl` (docs/security.md).

Every role gets only the farm's keys: the queues `farm.*`, the live state `farm:*`, kombu's
bindings and unacked bookkeeping (`_kombu.*`, `unacked*`); only the worker gets Celery's pidbox and event channels. The commands are the farm's categories without `@dangerous` (FLUSHALL,
CONFIG, KEYS, DEBUG, SHUTDOWN, ACL ... stay with the admin):

- worker: reads its queues (blocking pops), keeps the ledger, runs the ledger's Lua scripts, and
  has Celery's remote-control mailbox and event channels (it answers only `ping`);
- submitter (`farm submit`, `resume`, `cancel`): queues tasks and writes the job's live state;
- viewer (`farm status`, `jobs`, `workers`, `dead-letters`): reads only.
"""

from __future__ import annotations

KEYS = "~farm.* ~farm:* ~_kombu.* ~unacked ~unacked_index ~unacked_mutex"
# kombu's Lua scripts call TIME
_WRITE = "+time +@read +@write +@list +@hash +@set +@sortedset +@string +@keyspace +@scripting +@transaction"
ROLES = {
    # + Celery's remote-control mailbox (the worker answers only `ping`, see farm/transport.py; the
    # consumer is what notices a Redis restart) and its event heartbeat
    # (kombu PSUBSCRIBEs to the mailbox, and Redis checks a subscribed pattern literally: the DB
    # number of the broker URL is part of it, hence {db})
    "worker": f"{KEYS} ~*.celery.pidbox resetchannels &/{{db}}.celery.pidbox &/*.celeryev/* -@all +@connection "
              f"{_WRITE} +@blocking +@pubsub -@dangerous",
    "submitter": f"{KEYS} resetchannels -@all +@connection {_WRITE} -@blocking -@dangerous",
    "viewer": f"{KEYS} resetchannels -@all +@connection +@read +multi +exec +discard -@dangerous",
}


def acl_line(role: str, user: str | None = None, password: str = "CHANGE-ME", db: int = 0) -> str:
    """An aclfile line for a role (`ACL SETUSER` takes what follows `user`); `db`: the database
    number of the broker URL (redis://host:6379/0)."""
    return f"user {user or 'farm-' + role} on >{password} {ROLES[role].replace('{db}', str(db))}"
