"""The review page's access rules, against the real server on a real socket: tokens and roles, the
cookie set by ?token=, Host and Origin checks, bounded bodies and timeouts."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from farm.review.server import TIMEOUT, Access, Handler, make_server
from farm.store import layout
from farm.store.memory import MemoryStore

JOB, STEM = "job-1", "7-abc"


@pytest.fixture
def serve():
    servers = []

    def start(access: Access = Access(), host: str = "127.0.0.1"):
        store = MemoryStore()
        store.write_text(layout.record_key(JOB, STEM), "{}")
        server = make_server(store, host, 0, access)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], store

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def mark(port, headers=None, body=b'{"mark": "star"}'):
    return request(port, "PUT", f"/api/jobs/{JOB}/marks/{STEM}", body,
                   {"Content-Type": "application/json", **(headers or {})})


def test_any_address_but_loopback_needs_a_token():
    with pytest.raises(ValueError, match="needs a token"):
        make_server(MemoryStore(), "0.0.0.0", 0)


def test_tokens_roles_and_the_cookie(serve):
    port, store = serve(Access(review_token="rev-secret", view_token="view-secret"))
    assert request(port, "GET", "/api/jobs")[0] == 401
    assert request(port, "GET", "/")[0] == 401
    assert request(port, "GET", "/api/jobs", headers={"Authorization": "Bearer nope"})[0] == 401
    assert request(port, "GET", "/api/jobs", headers={"Authorization": "Bearer view-secret"})[0] == 200
    # a viewer may look but not mark
    assert mark(port, {"Authorization": "Bearer view-secret"})[0] == 403
    # the first visit with ?token= sets the cookie and drops the token from the address bar
    status, headers, _ = request(port, "GET", "/?token=rev-secret")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert request(port, "GET", "/?token=wrong")[0] == 401
    jar = {"Cookie": cookie.split(";")[0]}
    assert request(port, "GET", "/api/jobs", headers=jar)[0] == 200
    assert mark(port, {**jar, "Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"})[0] == 200
    assert json.loads(store.read_text(layout.mark_key(JOB, STEM)))["mark"] == "star"


def test_writes_from_another_origin_and_foreign_hosts_are_refused(serve):
    port, _ = serve()  # 127.0.0.1 without a token: this PC's own browser
    assert mark(port, {"Origin": "http://evil.example"})[0] == 403
    assert mark(port, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the Host header still names it
    assert request(port, "GET", "/api/jobs", headers={"Host": f"evil.example:{port}"})[0] == 403
    assert request(port, "GET", "/api/jobs", headers={"Host": f"localhost:{port}"})[0] == 200


@pytest.mark.parametrize("length, status", [("-1", 400), ("abc", 400), ("99999999", 413), (None, 411)])
def test_bad_content_lengths_are_answered_at_once(serve, length, status):
    port, _ = serve()
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = f"PUT /api/jobs/{JOB}/marks/{STEM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else ""
    started = time.monotonic()
    conn.sendall((head + "\r\n").encode())
    reply = conn.recv(4096).decode()
    conn.close()
    assert reply.startswith(f"HTTP/1.0 {status}") or reply.startswith(f"HTTP/1.1 {status}"), reply
    assert time.monotonic() - started < 3


def test_an_idle_connection_is_dropped_after_the_timeout(serve, monkeypatch):
    monkeypatch.setattr(Handler, "timeout", 1)
    port, _ = serve()
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"GET /api/jobs HTTP/1.1\r\n")  # and never the rest
    started = time.monotonic()
    assert conn.recv(4096) == b""  # the server closed it
    assert time.monotonic() - started < 5 and TIMEOUT == 30
    conn.close()


def test_healthz_answers_without_a_token_and_says_nothing_else(tmp_path):
    """Container healthchecks probe /healthz: no token needed, no data given."""
    import urllib.request

    from conftest import FARM_BIN, free_port, wait_for_port
    import subprocess

    port = free_port()
    proc = subprocess.Popen([str(FARM_BIN), "review", "--store", str(tmp_path), "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5)
            raise AssertionError("the API answered without a token")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        proc.terminate()
        proc.wait(10)
