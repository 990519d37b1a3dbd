"""Secrets kept out of the process list, logs and the store.

The broker password comes, in this order, from `--broker-password-file FILE` /
`FARM_BROKER_PASSWORD_FILE` / `broker_password_file:` in the config, from `FARM_BROKER_PASSWORD` /
`broker_password:` in the config, or from the URL itself (`redis://:PASSWORD@host`). A password in a
URL on the command line is readable by every user of the PC in `ps` until the process rewrites its
title: `scrub_argv` does that first thing at start (setproctitle) and says which ways keep it out.
S3 keys come only from boto3's own places (AWS_* env vars, ~/.aws, instance roles), never a URL.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import quote, unquote

# scheme://[user]:password@ : the part a process list must not show
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?=@)")


def password_in(url: str) -> str | None:
    m = _CREDENTIALS.search(url)
    return unquote(m["password"]) if m else None


def hide_passwords(text: str) -> str:
    return _CREDENTIALS.sub(lambda m: m["head"] + "***", text)


def with_password(url: str, password: str) -> str:
    """The URL with this password (replacing any it holds): `redis://host` -> `redis://:pw@host`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url}: expected a URL like redis://HOST:6379/0")
    host = rest.rsplit("@", 1)[-1]
    user = rest.rsplit("@", 1)[0].split(":", 1)[0] if "@" in rest else ""
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def read_password_file(path: str) -> str:
    """The first line of a password file (a trailing newline is not part of the password)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except OSError as e:
        raise ValueError(f"cannot read the broker password file {path}: {e.strerror}") from None
    if not password:
        raise ValueError(f"the broker password file {path} is empty")
    return password


def scrub_argv(argv: list[str] | None = None) -> bool:
    """Rewrite the process title (what `ps` and /proc/PID/cmdline show) without any password given
    in a URL argument; True when there was one (the caller warns). sys.argv is scrubbed as well."""
    argv = sys.argv if argv is None else argv
    if not any(_CREDENTIALS.search(a) for a in argv):
        return False
    argv[:] = [hide_passwords(a) for a in argv]
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(argv))
    except ImportError:  # the dependency is declared; without it only sys.argv is clean
        pass
    return True
