"""Redis ACL users for the farm's roles, printed by `farm redis-acl` (docs/security.md).

Every role gets only the farm's keys: the queues `farm.*`, the live state `farm:*`, kombu's
bindings and unacked bookkeeping (`_kombu.*`, `unacked*`), and no pub/sub channel (workers take no
remote-control commands). The commands are the farm's categories without `@dangerous` (FLUSHALL,
CONFIG, KEYS, DEBUG, SHUTDOWN, ACL ... stay with the admin):

- worker: reads its queues (blocking pops), keeps the ledger, runs the ledger's Lua scripts;
- submitter (`farm submit`, `resume`, `cancel`): queues tasks and writes the job's live state;
- viewer (`farm status`, `jobs`, `workers`, `dead-letters`): reads only.
"""

from __future__ import annotations

KEYS = "~farm.* ~farm:* ~_kombu.* ~unacked ~unacked_index ~unacked_mutex"
_WRITE = "+@read +@write +@list +@hash +@set +@sortedset +@string +@keyspace +@scripting +@transaction"
ROLES = {
    "worker": f"{KEYS} resetchannels -@all +@connection {_WRITE} +@blocking -@dangerous",
    "submitter": f"{KEYS} resetchannels -@all +@connection {_WRITE} -@blocking -@dangerous",
    "viewer": f"{KEYS} resetchannels -@all +@connection +@read +multi +exec +discard -@dangerous",
}


def acl_line(role: str, user: str | None = None, password: str = "CHANGE-ME") -> str:
    """`ACL SETUSER` arguments (also the line of an aclfile after `user`) for a role."""
    return f"user {user or 'farm-' + role} on >{password} {ROLES[role]}"


def acl_lines(password: str = "CHANGE-ME") -> list[str]:
    return [acl_line(role, password=password) for role in ROLES]
