"""`farm review`: the review page and its small JSON API, on the standard library's HTTP server.

The server reads and writes only through the Store interface, so a job in an S3 bucket is
reviewed exactly like one in a folder; it serves the images itself (the browser needs no
credentials). `export_page` writes the same page as static files next to a job instead.

    GET  /api/jobs                         jobs with progress
    GET  /api/jobs/JOB                     axes, images, marks (polled while the job renders)
    GET  /api/jobs/JOB/marks               marks only (polled: other reviewers' clicks)
    PUT  /api/jobs/JOB/marks/STEM          {"mark": "star" | "reject" | null}
    GET  /api/jobs/JOB/stars.yaml          the starred images as a new job spec
    GET  /api/jobs/JOB/stars.png           a sheet of the starred images
    GET  /store/JOB/images/NAME.png        an image (also sheets/)

Access (docs/security.md): the standard library's server kept, with what makes it safe to open on
a LAN, because the API is seven routes and the page polls every few seconds; an ASGI stack would
add two dependencies to the coordinator for no point the issue asks for. `Access` holds the
tokens: a `review` token may read and mark, a `view` token only read. A request shows its token as
`Authorization: Bearer TOKEN`, or once as `?token=TOKEN`, which sets an HttpOnly, SameSite=Strict
cookie and redirects to the URL without it. Without a token configured (127.0.0.1 only) every
request is a reviewer, but the Host header must then name the loopback address (DNS rebinding).
Writes need an `Origin` (when the browser sends one) equal to the page's own and a JSON body of at
most MAX_BODY bytes with a valid Content-Length; every connection times out after TIMEOUT seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlparse

from farm.jobs import read_job_record
from farm.review.catalog import Catalog, job_payload, list_jobs
from farm.review.marks import image_stem, read_marks, set_mark
from farm.review.starspec import starred_spec
from farm.sheets import star_sheet, store_image_loader
from farm.store import Store, layout, load_records

STATIC = ("index.html", "app.js", "style.css")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".yaml": "application/yaml; charset=utf-8",
         ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MAX_BODY = 4096  # a mark is a few bytes
TIMEOUT = 30  # seconds a connection may sit idle or trickle a request: a slow client holds no thread
COOKIE = "farm_review"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Access:
    """Who may do what: tokens for the `review` (read and mark) and `view` (read) roles. No token at
    all is allowed only on a loopback address (make_server refuses otherwise)."""

    review_token: str | None = None
    view_token: str | None = None

    @property
    def open(self) -> bool:
        return not self.review_token and not self.view_token

    def role(self, token: str | None) -> str | None:
        if self.open:
            return "review"
        for role, want in (("review", self.review_token), ("view", self.view_token)):
            if want and token and hmac.compare_digest(token.encode(), want.encode()):
                return role
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def static_file(name: str) -> bytes:
    return (resources.files("farm.review") / "static" / name).read_bytes()


def starred(store: Store, job: str) -> list[dict]:
    marks = read_marks(store, job)
    return [r for r in load_records(store, job) if marks.get(image_stem(r)) == "star"]


def stars_yaml(store: Store, job: str) -> bytes:
    name = read_job_record(store, job).get("name", job)
    text, _ = starred_spec(name, starred(store, job), f"job {job} ({store.describe(job)})")
    return text.encode("utf-8")


def stars_png(store: Store, job: str) -> bytes:
    records = starred(store, job)
    if not records:
        raise ValueError("no starred images: star some first")
    return star_sheet(records, store_image_loader(store, job), f"Starred in {job}").png()


class Handler(BaseHTTPRequestHandler):
    catalog: Catalog  # set on the subclass made by make_server
    access: Access = Access()
    timeout = TIMEOUT  # socket timeout for each connection (StreamRequestHandler)

    def log_request(self, code="-", size="-") -> None:  # quiet: the terminal shows only errors
        pass

    def send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, data, status: int = 200) -> None:
        self.send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json")

    def error(self, status: int, message: str) -> None:
        self.send_json({"error": message}, status)

    def do_GET(self) -> None:
        self.route("GET")

    def do_PUT(self) -> None:
        self.route("PUT")

    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        return jar[COOKIE].value if COOKIE in jar else None

    def host_ok(self) -> bool:
        """Without tokens the page trusts every request from this PC, so the Host must be the
        loopback name it was opened with: a DNS-rebinding page on another name is refused."""
        if not self.access.open:
            return True
        host = self.headers.get("Host") or ""
        return (host if host.endswith("]") else host.rsplit(":", 1)[0]) in LOOPBACK_NAMES

    def origin_ok(self) -> bool:
        origin = self.headers.get("Origin")
        return origin is None or origin == f"http://{self.headers.get('Host', '')}"

    def route(self, method: str) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        store = self.catalog.store
        if method == "GET" and path == "/healthz":  # for container healthchecks: says nothing but "ok"
            return self.send(200, b"ok", "text/plain")
        if not self.host_ok():
            return self.error(HTTPStatus.FORBIDDEN, "unknown Host: open the page as http://127.0.0.1:PORT/")
        given = parse_qs(url.query).get("token", [None])[0]
        if given is not None and method == "GET":
            if self.access.role(given) is None:
                return self.error(HTTPStatus.UNAUTHORIZED, "wrong token")
            cookie = f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
            return self.send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": url.path or "/", "Set-Cookie": cookie})
        role = self.access.role(self.token())
        if role is None:
            return self.error(HTTPStatus.UNAUTHORIZED, "this review page needs its token: open the URL "
                              "`farm review` printed (…/?token=…) or send Authorization: Bearer TOKEN")
        if method != "GET":
            if role != "review":
                return self.error(HTTPStatus.FORBIDDEN, "this token may view, not mark")
            if not self.origin_ok():
                return self.error(HTTPStatus.FORBIDDEN, "a write from another site's page is refused (Origin)")
        try:
            if method == "GET" and path in ("/", "/index.html"):
                return self.send(200, static_file("index.html"), TYPES[".html"])
            if method == "GET" and path.lstrip("/") in STATIC:
                name = path.lstrip("/")
                return self.send(200, static_file(name), TYPES["." + name.rsplit(".", 1)[1]])
            if method == "GET" and path == "/data.js":  # the static export's data; live: none
                return self.send(200, b"", TYPES[".js"])
            if method == "GET" and path == "/api/jobs":
                return self.send_json({"store": store.describe(), "jobs": list_jobs(store)})
            m = re.fullmatch(rf"/api/jobs/({_NAME})(?:/(marks|stars\.yaml|stars\.png))?", path)
            if method == "GET" and m:
                job, what = m.groups()
                if what is None:
                    return self.send_json(self.catalog.job(job))
                if what == "marks":
                    return self.send_json(read_marks(store, job))
                suffix = what.removeprefix("stars")
                body = stars_yaml(store, job) if suffix == ".yaml" else stars_png(store, job)
                disposition = {"Content-Disposition": f'attachment; filename="{job}-{what}"'}
                return self.send(200, body, TYPES[suffix], disposition)
            m = re.fullmatch(rf"/api/jobs/({_NAME})/marks/({_NAME})", path)
            if method == "PUT" and m:
                return self.put_mark(*m.groups())
            # the page asks for /store/ + an image's or a sheet's key
            m = re.fullmatch(rf"/store/({_NAME})/({layout.IMAGES}|{layout.SHEETS})/({_NAME})\.png", path)
            if method == "GET" and m:
                job, folder, name = m.groups()
                key = layout.image_key(job, name) if folder == layout.IMAGES else layout.sheet_key(job, name)
                body = store.read_bytes(key)
                return self.send(200, body, TYPES[".png"], {"Cache-Control": "max-age=3600"})
            # an input image (img2img's init image), by its content name: only such names are read
            m = re.fullmatch(rf"/store/({_NAME})/{layout.INPUTS}/([0-9a-f]{{64}}\.(png|jpg|jpeg|webp))", path)
            if method == "GET" and m:
                job, name, ext = m.groups()
                body = store.read_bytes(layout.input_key(job, name))
                return self.send(200, body, TYPES["." + ext], {"Cache-Control": "max-age=3600"})
            return self.error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        except FileNotFoundError:
            return self.error(HTTPStatus.NOT_FOUND, f"not in the store: {path}")
        except ValueError as e:
            return self.error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:  # e.g. the bucket unreachable: one line for the page and the terminal
            self.log_error("%s %s: %s: %s", method, path, type(e).__name__, e)
            return self.error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def put_mark(self, job: str, stem: str) -> None:
        text = self.headers.get("Content-Length")
        if text is None:
            return self.error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if not text.isascii() or not text.isdigit():
            self.close_connection = True  # what follows is not a request we can find the end of
            return self.error(HTTPStatus.BAD_REQUEST, f"Content-Length {text[:20]!r} is not a size")
        length = int(text)
        if length > MAX_BODY:
            self.close_connection = True
            return self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "a mark is {\"mark\": \"star\"}")
        try:
            mark = json.loads(self.rfile.read(length) or b"{}").get("mark")
        except (ValueError, AttributeError):
            return self.error(HTTPStatus.BAD_REQUEST, 'expected JSON like {"mark": "star"}')
        # only images of the job can be marked: no client writes an arbitrary key
        if not self.catalog.store.exists(layout.record_key(job, stem)):
            return self.error(HTTPStatus.NOT_FOUND, f"job {job} has no image {stem}")
        set_mark(self.catalog.store, job, stem, mark)
        return self.send_json({"id": stem, "mark": mark})


def make_server(store: Store, host: str = "127.0.0.1", port: int = 8188,
                access: Access = Access()) -> ThreadingHTTPServer:
    """The review server, bound but not yet serving (serve_forever() runs it). Any address but a
    loopback one needs a token (`farm review` makes one when none is given)."""
    if access.open and not is_loopback(host):
        raise ValueError(f"the review page on {host} needs a token (--token or FARM_REVIEW_TOKEN)")
    handler = type("ReviewHandler", (Handler,), {"catalog": Catalog(store), "access": access})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def export_page(store: Store, job: str) -> list[str]:
    """The page as static files in the job's review folder, to browse the job without a server
    (from a folder, or a bucket served over HTTP). Stars are as they were at export: read-only there."""
    record = read_job_record(store, job)
    records = load_records(store, job)
    if not records:
        raise ValueError(f"no finished images in {store.describe(job)}: nothing to review")
    payload = {**job_payload(store, job, record, records, read_marks(store, job)), "static": True}
    files = {name: static_file(name) for name in STATIC}
    # a script, not JSON: a page opened from file:// may not fetch() files next to it
    files["data.js"] = ("window.SEEDFARM_DATA = " + json.dumps(payload, ensure_ascii=False) + ";\n").encode()
    if "star" in payload["marks"].values():
        files["stars.yaml"] = stars_yaml(store, job)
        files["stars.png"] = stars_png(store, job)
    for stale in ("stars.yaml", "stars.png"):
        if stale not in files:  # stars cleared since an earlier export
            store.delete(layout.review_file_key(job, stale))
    written = []
    for name, body in files.items():
        store.write_bytes(layout.review_file_key(job, name), body)
        written.append(layout.review_file_key(job, name))
    return written
