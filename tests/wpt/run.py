#!/usr/bin/env python3
"""Run web-platform-tests (`*.any.js`, in their worker flavour) on Outpost, and optionally Deno.

    python3 tests/wpt/run.py --wpt-dir $WPT_DIR [--outpost target/debug/outpost] [--deno PATH]
                             [--area NAME ...] [--filter SUBSTR] [--jobs 2] [--update] [--check]

Every test run (a file, or one `?variant` of it) becomes an app directory (`outpost.toml` and a
module `worker.js` embedding testharness.js, the report glue, the META scripts and the test) under
a temporary directory. One `outpost dev` serves them all; each is requested once at
http://NAME.localhost:PORT/ and answers its results as JSON. With --deno the same `worker.js` runs
under `deno serve`, one process per run. The WPT files are served by WPT's own server, wptserve,
from the checkout's tools/ (tests/wpt/wpt_server.py), or, without tools/ or with --static-server,
by a static file server of the runner's own. See tests/wpt/README.md.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import http.server
import json
import mimetypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPECTATIONS = HERE / "expectations.json"
REPORT = HERE / "report.md"
WPT_COMMIT_FILE = HERE / "WPT_COMMIT"

# Area name -> (what it covers, WPT paths: directories end with "/", anything else is one file).
# Only `*.any.js` files are taken. A file belongs to the first area listing it, so the
# getRandomValues files go to their own area before WebCryptoAPI.
AREAS: list[tuple[str, str, list[str]]] = [
    ("url", "URL, URLSearchParams", ["url/"]),
    ("encoding", "TextEncoder/TextDecoder and their streams", ["encoding/"]),
    ("streams", "ReadableStream, WritableStream, TransformStream", ["streams/"]),
    ("compression", "CompressionStream, DecompressionStream", ["compression/"]),
    ("headers", "Headers", ["fetch/api/headers/"]),
    ("request", "Request", ["fetch/api/request/"]),
    ("response", "Response", ["fetch/api/response/"]),
    ("body", "Body mixin", ["fetch/api/body/"]),
    ("abort", "aborting fetch", ["fetch/api/abort/"]),
    ("fetch", "fetch() basics", ["fetch/api/basic/"]),
    ("FormData", "FormData", ["xhr/formdata/"]),
    ("FileAPI", "Blob, File, FileReader", ["FileAPI/"]),
    ("structured-clone", "structuredClone", ["html/webappapis/structured-clone/"]),
    ("base64", "atob/btoa", ["html/webappapis/atob/"]),
    ("timers", "setTimeout/setInterval", ["html/webappapis/timers/"]),
    ("microtasks", "queueMicrotask", ["html/webappapis/microtask-queuing/"]),
    ("events", "Event, EventTarget, CustomEvent", ["dom/events/"]),
    ("AbortController", "AbortController, AbortSignal", ["dom/abort/"]),
    ("DOMException", "DOMException", ["webidl/ecmascript-binding/es-exceptions/"]),
    ("hr-time", "performance.now, timeOrigin", ["hr-time/"]),
    ("console", "console", ["console/"]),
    ("crypto.getRandomValues", "crypto.getRandomValues",
     ["WebCryptoAPI/getRandomValues.any.js"]),
    ("WebCryptoAPI", "crypto.subtle, randomUUID", ["WebCryptoAPI/"]),
    ("reportError", "reportError", ["html/webappapis/scripting/reporterror.any.js"]),
]

# `// META: global=` values that run in some worker-like scope (an Outpost isolate is one). A
# file only for `shadowrealm` is not taken: such files assert what a ShadowRealm must *not*
# expose (e.g. "AbortSignal.timeout() is not exposed in ShadowRealm"), false of any worker.
WORKER_GLOBALS = {
    "worker", "worker-module", "dedicatedworker", "dedicatedworker-module", "sharedworker",
    "sharedworker-module", "serviceworker", "serviceworker-module", "jsshell",
}
META_RE = re.compile(r"//\s*META:\s*(\w*)=(.*)$")
HARNESS_TIMEOUT_S = {"normal": 10, "long": 30}
HARNESS_ENTRY = "[harness]"  # the expectations' name for a run's harness status
MESSAGE_CHARS = 200
OUTPOST_FLAGS = [
    "--workers", "2", "--cpu-ms", "60000", "--timeout-ms", "120000", "--memory-mb", "512",
    "--max-isolates", "2000", "--max-isolates-per-app", "1", "--server-timing", "off",
    # Not in production's range: some tests make hundreds of fetches from one request.
    "--subrequests", "100000",
]
STATUSES = ("PASS", "FAIL", "TIMEOUT", "NOTRUN", "PRECONDITION_FAILED")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Discovery


@dataclass
class Run:
    key: str            # "url/url-constructor.any.js?include=file"
    path: str           # "url/url-constructor.any.js"
    variant: str        # "?include=file" or ""
    area: str
    scripts: list[str]  # META script paths from the WPT root, in order ("/common/utils.js")
    long: bool
    title: str | None
    app: str = ""
    results: dict = field(default_factory=dict)  # engine -> {"harness": {...}, "tests": [...]}


def read_meta(path: Path) -> list[tuple[str, str]]:
    meta = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            m = META_RE.match(line)
            if not m:
                break
            meta.append((m.group(1), m.group(2).strip()))
    return meta


def area_of(path: str) -> str | None:
    for name, _, prefixes in AREAS:
        for p in prefixes:
            if (p.endswith("/") and path.startswith(p)) or path == p:
                return name
    return None


def runs_globally(meta: list[tuple[str, str]]) -> bool:
    values = [v for k, v in meta if k == "global"]
    if not values:
        return True  # default: window and dedicatedworker
    kinds = {x.strip() for v in values for x in v.split(",")}
    return bool(kinds & WORKER_GLOBALS)


def resolve_script(test_path: str, src: str) -> str:
    src = src.split("?")[0].split("#")[0]
    if src.startswith("/"):
        return posix_normpath(src)
    base = "/" + test_path.rsplit("/", 1)[0] + "/"
    return posix_normpath(base + src)


def posix_normpath(p: str) -> str:
    parts: list[str] = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def discover(wpt: Path, areas: list[str] | None, substr: str | None):
    """Runs to do, and files skipped as window-only (path -> area)."""
    wanted = None if not areas else {a.lower() for a in areas}
    seen: set[str] = set()
    runs: list[Run] = []
    window_only: dict[str, str] = {}
    for name, _, prefixes in AREAS:
        if wanted is not None and name.lower() not in wanted:
            continue
        files: list[str] = []
        for p in prefixes:
            full = wpt / p
            if p.endswith("/"):
                if full.is_dir():
                    for f in full.rglob("*.any.js"):
                        files.append(f.relative_to(wpt).as_posix())
            elif full.is_file():
                files.append(p)
        for rel in sorted(set(files)):
            if rel in seen or area_of(rel) != name:
                continue
            seen.add(rel)
            meta = read_meta(wpt / rel)
            if not runs_globally(meta):  # window-only (or ShadowRealm-only)
                if substr is None or substr in rel:
                    window_only[rel] = name
                continue
            variants = [v for k, v in meta if k == "variant"] or [""]
            scripts = [resolve_script(rel, v) for k, v in meta if k == "script"]
            long = any(k == "timeout" and v == "long" for k, v in meta)
            titles = [v for k, v in meta if k == "title"]
            for variant in variants:
                key = rel + variant
                if substr is not None and substr not in key:
                    continue
                runs.append(Run(key, rel, variant, name, scripts, long,
                                titles[-1] if titles else None))
    if wanted is not None:
        known = {n.lower() for n, _, _ in AREAS}
        for a in wanted - known:
            sys.exit(f"unknown area {a!r}; areas: {', '.join(n for n, _, _ in AREAS)}")
    return runs, window_only


# --------------------------------------------------------------------------------------------
# The WPT server. By default WPT's own, wptserve (tools/serve and tools/wptserve of the
# checkout), run by tests/wpt/wpt_server.py in a child process: Python handlers (`*.py`), the
# stash, every pipe and template. Without tools/ in the checkout, or with --static-server, a
# static file server of our own (what wptserve does for static files: `.headers` side files,
# `.sub.` substitution of the few templates the covered tests use; no Python handlers).

WPT_SERVER_SCRIPT = HERE / "wpt_server.py"
# The hosts of the WPT server's URLs: 127.0.0.1 ({{host}}); with wptserve, localhost too (every
# other host of its config, e.g. {{domains[www]}}). normalize() hides their ports.
WPT_HOSTS = ("127.0.0.1", "localhost")
# wptserve's log (logs/wptserve.log): "debug" logs every request with its status.
WPTSERVE_LOG_LEVEL = "debug"
WPTSERVE_START_S = 60


@dataclass
class WptServer:
    kind: str                # "wptserve" or "static"
    port: int                # {{ports[http][0]}}: the test URLs' origin is http://127.0.0.1:port
    ports: dict[str, int]    # label -> port, for normalize(): "wpt-port", "wpt-port2", ...
    stop: object             # () -> None
    alt_host: str | None = None  # wptserve: the host of {{domains[www]}}, {{hosts[alt][]}}...


# Which server read_source() asks: set by start_wpt_server().
SERVER: WptServer | None = None


def wptserve_available(wpt: Path) -> bool:
    return (wpt / "tools" / "serve" / "serve.py").is_file() and \
        (wpt / "tools" / "wptserve" / "wptserve").is_dir() and (wpt / "tools" / "localpaths.py").is_file()


def start_wpt_server(wpt: Path, logs: Path, static: bool) -> WptServer:
    global SERVER
    if not static and not wptserve_available(wpt):
        log(f"NOTE: {wpt} has no tools/ (tools/serve, tools/wptserve, tools/localpaths.py): "
            "serving it with the runner's static file server instead of wptserve. Subtests that "
            "need a wptserve Python handler (*.py URLs, the stash, most pipes) will fail on every "
            "engine. Extract tools/ from the WPT commit to get them (tests/wpt/README.md).")
        static = True
    SERVER = start_static(wpt) if static else start_wptserve(wpt, logs)
    return SERVER


def start_static(wpt: Path) -> WptServer:
    server, server2 = make_server(wpt), make_server(wpt)
    SERVER_PORTS[:] = [server.server_port, server2.server_port]

    def stop():
        server.shutdown()
        server2.shutdown()

    return WptServer("static", server.server_port,
                     {"wpt-port": server.server_port, "wpt-port2": server2.server_port}, stop)


def start_wptserve(wpt: Path, logs: Path) -> WptServer:
    """wptserve on 127.0.0.1 at free ports, in a child process that stops when its stdin closes
    (so also when this process dies)."""
    err_log = logs / "wptserve.log"
    cmd = [sys.executable, str(WPT_SERVER_SCRIPT), "--wpt-dir", str(wpt),
           "--log-level", WPTSERVE_LOG_LEVEL]
    log("$ " + shlex.join(cmd))
    with open(err_log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(WPTSERVE_START_S)
    try:
        info = json.loads(line[0])
        http = info["ports"]["http"]
    except Exception:  # noqa: BLE001 - no line, or not the JSON: it did not start
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tail = err_log.read_text("utf-8", "replace")[-3000:]
        sys.exit(f"wptserve did not start (see {err_log}):\n{tail}\n"
                 "(--static-server serves the checkout without it)")

    def stop():
        if proc.poll() is None:
            try:
                proc.stdin.close()  # wpt_server.py stops when its stdin closes
                proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    ports = {"wpt-port": http[0], "wpt-port2": http[1]}
    for scheme, numbers in sorted(info["ports"].items()):
        for i, port in enumerate(numbers):
            if scheme != "http":
                ports[f"wpt-{scheme}-port" + (str(i + 1) if i else "")] = port
    log(f"wptserve (pid {proc.pid}, log {err_log}) listening on 127.0.0.1, ports "
        + ", ".join(f"{s} {'/'.join(map(str, p))}" for s, p in info["ports"].items()
                    if s in info["listening"])
        + f"; {{{{host}}}} is {info['host']}, other hosts are {info['alt_host']}")
    return WptServer("wptserve", http[0], ports, stop, info["alt_host"])


SUB_RE = re.compile(r"\{\{([^}]*)\}\}")
# wptserve's rewrites (tools/serve/serve.py): URL path -> file path.
REWRITES = {"/resources/WebIDLParser.js": "/resources/webidl2/lib/webidl2.js"}


# The static server listens on two ports: {{ports[http][0]}} and {{ports[http][1]}} (a second
# origin). https/ws/wss ports get the same numbers (no TLS: such fetches fail).
SERVER_PORTS: list[int] = []


def substitute(text: str) -> str:
    def one(m):
        expr = m.group(1).strip()
        if expr == "host":
            return "127.0.0.1"
        pm = re.fullmatch(r"ports\[\w+\]\[(\d+)\]", expr)
        if pm:
            return str(SERVER_PORTS[min(int(pm.group(1)), len(SERVER_PORTS) - 1)])
        if expr.startswith("domains[") or expr.startswith("hosts["):
            return "127.0.0.1"
        if expr == "location[port]":
            return str(SERVER_PORTS[0])
        if expr == "location[scheme]":
            return "http"
        if expr == "location[host]":
            return f"127.0.0.1:{SERVER_PORTS[0]}"
        return m.group(0)

    return SUB_RE.sub(one, text)


def read_source(wpt: Path, url_path: str, port: int) -> str | None:
    """A script's source as the WPT server serves it (None: not found)."""
    if SERVER is not None and SERVER.kind == "wptserve":
        return fetch_source(url_path, port)
    f = wpt / REWRITES.get(url_path, url_path).lstrip("/")
    if not f.is_file():
        return None
    text = f.read_bytes().decode("utf-8", "replace")  # importScripts decodes UTF-8
    if ".sub." in f.name:
        text = substitute(text)
    return text


SOURCES: dict[tuple[str, int], str | None] = {}  # fetch_source's answers (scripts are static)


def fetch_source(url_path: str, port: int) -> str | None:
    """GET a script from wptserve, so `.sub.` templates, `.headers` and rewrites are its own."""
    if (url_path, port) not in SOURCES:
        SOURCES[(url_path, port)] = fetch_source_uncached(url_path, port)
    return SOURCES[(url_path, port)]


def fetch_source_uncached(url_path: str, port: int) -> str | None:
    for attempt in range(3):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", urllib.parse.quote("/" + url_path.lstrip("/")))
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            break
        except OSError as e:
            if attempt == 2:
                log(f"wptserve: GET {url_path} failed: {e}")
                return None
            time.sleep(0.5)
    if resp.status != 200:
        log(f"wptserve: GET {url_path} answered {resp.status}: {body[:200]!r}")
        return None
    return body.decode("utf-8", "replace")  # importScripts decodes UTF-8


def make_server(wpt: Path):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status, body: bytes, headers: list[tuple[str, str]], head=False):
            self.send_response(status)
            names = {k.lower() for k, _ in headers}
            for k, v in headers:
                self.send_header(k, v)
            if "content-length" not in names:
                self.send_header("Content-Length", str(len(body)))
            if "access-control-allow-origin" not in names:
                self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head=False):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            rel = posix_normpath(path)
            rel = REWRITES.get(rel, rel).lstrip("/")
            f = wpt / rel
            if rel.endswith(".py"):
                body = b"tests/wpt/run.py serves static files only: no wptserve Python handlers"
                return self._send(501, body, [("Content-Type", "text/plain")], head)
            if self.command not in ("GET", "HEAD"):
                return self._send(405, b"static files answer GET and HEAD only",
                                  [("Content-Type", "text/plain")], head)
            if not f.is_file():
                return self._send(404, b"not found", [("Content-Type", "text/plain")], head)
            body = f.read_bytes()
            if ".sub." in f.name:
                body = substitute(body.decode("utf-8", "replace")).encode()
            headers = [("Content-Type", content_type(f.name))]
            pairs = []
            for side in (f.parent / "__dir__.headers", f.with_name(f.name + ".headers")):
                if side.is_file():
                    for line in side.read_text("utf-8", "replace").splitlines():
                        if ":" in line:
                            k, v = line.split(":", 1)
                            pairs.append((k.strip(), v.strip()))
            status = 200
            # wptserve's header() and status() pipes, the ones these tests use
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            for pipe in "|".join(query.get("pipe", [])).split("|"):
                m = re.fullmatch(r"(header|status)\((.*)\)", pipe.strip())
                if m and m.group(1) == "header" and "," in m.group(2):
                    k, v = m.group(2).split(",", 1)
                    pairs.append((k.strip(), v.split(",")[0].strip()))
                elif m and m.group(1) == "status" and m.group(2).strip().isdigit():
                    status = int(m.group(2))
            for k, v in pairs:
                headers = [h for h in headers if h[0].lower() != k.lower()]
                headers.append((k, v))
            self._send(status, body, headers, head)

        def do_GET(self):
            self._serve()

        def do_HEAD(self):
            self._serve(head=True)

        def do_POST(self):
            self._serve()

        do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_POST

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def content_type(name: str) -> str:
    if name.endswith((".js", ".mjs")):
        return "text/javascript; charset=utf-8"
    if name.endswith(".json"):
        return "application/json"
    if name.endswith((".idl", ".txt")):
        return "text/plain; charset=utf-8"
    guess, _ = mimetypes.guess_type(name)
    return guess or "application/octet-stream"


# --------------------------------------------------------------------------------------------
# Generating the apps


def test_url(run: Run, port: int) -> str:
    assert run.path.endswith(".any.js")
    return f"http://127.0.0.1:{port}/{run.path[:-len('.js')]}.worker.html{run.variant}"


def write_app(apps: Path, run: Run, wpt: Path, port: int):
    origin = f"http://127.0.0.1:{port}"
    url = test_url(run, port)
    scripts = [{"url": origin + s, "source": read_source(wpt, s, port)} for s in run.scripts]
    scripts.append({"url": origin + "/" + run.path, "source": read_source(wpt, run.path, port)})
    data = {
        "key": run.key,
        "url": url,
        "timeoutMs": int(HARNESS_TIMEOUT_S["long" if run.long else "normal"] * 1000),
        "title": run.title,
        "testharness": {"url": origin + "/resources/testharness.js",
                        "source": read_source(wpt, "/resources/testharness.js", port)},
        "report": {"url": origin + "/resources/testharnessreport.js",
                   "source": (HERE / "harness" / "report.js").read_text()},
        "scripts": scripts,
    }
    d = apps / run.app
    d.mkdir(parents=True)
    # The test's URL is the app's base URL (relative URLs, `location`), as Deno's --location.
    (d / "outpost.toml").write_text(
        f'name = "{run.app}"\nmain = "worker.js"\nlocation = {json.dumps(url)}\n')
    module = (HERE / "harness" / "module.js").read_text()
    (d / "worker.js").write_text(
        f"// Generated by tests/wpt/run.py for {run.key}. Do not edit.\n"
        f"const TEST = {json.dumps(data, ensure_ascii=True)};\n\n{module}")


# --------------------------------------------------------------------------------------------
# Engines


def wait_for_line(path: Path, pattern: re.Pattern, proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        m = pattern.search(text)
        if m:
            return m
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def request(port: int, host: str, timeout: float) -> dict:
    """GET / with Host: HOST. A failed, non-200 or unparsable answer is a harness error."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        conn.close()
    except Exception as e:  # noqa: BLE001 - every failure becomes the run's harness error
        return harness_error(f"request failed: {type(e).__name__}: {e}")
    if resp.status != 200:
        return harness_error(f"HTTP {resp.status}: {body.strip()[:1000]}")
    try:
        result = json.loads(body)
        assert isinstance(result.get("tests"), list) and isinstance(result.get("harness"), dict)
        return result
    except Exception:  # noqa: BLE001
        return harness_error(f"unparsable answer: {body.strip()[:1000]}")


def harness_error(message: str) -> dict:
    return {"harness": {"status": "ERROR", "message": message}, "tests": []}


def client_timeout(run: Run) -> float:
    return HARNESS_TIMEOUT_S["long" if run.long else "normal"] + 30


class OutpostNode:
    """One `outpost dev` serving every app; restarted when it dies (a crash is a finding)."""

    def __init__(self, binary: Path, apps: Path, logs: Path):
        self.binary, self.apps, self.logs = binary, apps, logs
        self.lock = threading.Lock()
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.err_log = logs / "outpost.stderr.log"
        self.crashes: list[str] = []
        self.crash_inflight: list[list[str]] = []
        self.inflight: dict[int, set[str]] = {}

    def start(self):
        self.generation += 1
        suffix = "" if self.generation == 1 else f".{self.generation}"
        out_log = self.logs / f"outpost{suffix}.stdout.log"
        self.err_log = self.logs / f"outpost{suffix}.stderr.log"
        cmd = [str(self.binary), "dev", str(self.apps), "--listen", "127.0.0.1:0", *OUTPOST_FLAGS]
        log("$ " + shlex.join(cmd))
        with open(out_log, "wb") as out, open(self.err_log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        m = wait_for_line(out_log, re.compile(r"listening on http://127\.0\.0\.1:(\d+)/"),
                          self.proc, 300)
        if not m:
            tail = self.err_log.read_text("utf-8", "replace")[-2000:]
            sys.exit(f"outpost dev did not start (see {self.err_log}):\n{tail}")
        self.port = int(m.group(1))
        log(f"outpost dev listening on 127.0.0.1:{self.port} (logs: {out_log}, {self.err_log})")

    def current(self, key: str):
        with self.lock:
            self.inflight.setdefault(self.generation, set()).add(key)
            return self.generation, self.port

    def finished(self, generation: int, key: str):
        with self.lock:
            self.inflight.get(generation, set()).discard(key)

    def died(self, generation: int) -> str | None:
        """If that generation of the node is dead: why (its panic), after restarting it."""
        with self.lock:
            if generation != self.generation:
                return self.crashes[generation - 1]
            if self.proc.poll() is None:
                time.sleep(0.5)  # a dying process may take a moment
                if self.proc.poll() is None:
                    return None
            text = self.err_log.read_text("utf-8", "replace")
            panic = re.search(r"panicked at ([^\n]*):\n([^\n]*)", text)
            why = (f"outpost dev died (exit {self.proc.returncode})"
                   + (f": panicked at {panic.group(1)}: {panic.group(2)}" if panic else "")
                   + f"; see {self.err_log}")
            self.crashes.append(why)
            self.crash_inflight.append(sorted(self.inflight.get(generation, ())))
            log(why)
            self.start()
            return why

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SoloLock:
    """Shared for ordinary runs; exclusive for a run retried alone after a crash."""

    def __init__(self):
        self.cond = threading.Condition()
        self.shared = 0
        self.solo = False

    def acquire(self, solo: bool):
        with self.cond:
            if solo:
                while self.solo:
                    self.cond.wait()
                self.solo = True
                while self.shared:
                    self.cond.wait()
            else:
                while self.solo:
                    self.cond.wait()
                self.shared += 1

    def release(self, solo: bool):
        with self.cond:
            if solo:
                self.solo = False
            else:
                self.shared -= 1
            self.cond.notify_all()


def run_outpost(binary: Path, apps: Path, logs: Path, runs: list[Run], jobs: int):
    node = OutpostNode(binary, apps, logs)
    node.start()
    lock = SoloLock()

    def one(run: Run):
        # A request that fails because the node died is retried once alone on a fresh node, so
        # a crash is pinned on the run that causes it and not on the one running beside it.
        for solo in (False, True):
            lock.acquire(solo)
            try:
                generation, port = node.current(run.key)
                result = request(port, f"{run.app}.localhost:{port}", client_timeout(run))
                why = None
                if result["harness"]["status"] == "ERROR" and not result["tests"] and \
                        result["harness"]["message"].startswith("request failed"):
                    why = node.died(generation)
                node.finished(generation, run.key)
            finally:
                lock.release(solo)
            if why is None:
                break
            result = harness_error(f"{'(alone) ' if solo else ''}{why}")
        run.results["outpost"] = result
        return run

    try:
        progress(runs, jobs, one, "outpost")
    finally:
        node.stop()
    by_key = {r.key: r for r in runs}
    crashes = []
    for why, keys in zip(node.crashes, node.crash_inflight):
        fates = []
        for k in keys:
            msg = str(by_key[k].results.get("outpost", {}).get("harness", {}).get("message"))
            fates.append(f"{k} ({'crashed again alone' if msg.startswith('(alone)') else 'passed alone'})")
        crashes.append(why + "; in flight: " + (", ".join(fates) or "nothing"))
    return crashes


def panics(logs: Path) -> list[tuple[int, str]]:
    """Panics in the node's logs (caught ones too: a caught panic drops its request)."""
    counts: dict[str, int] = {}
    for f in sorted(logs.glob("outpost*.stderr.log")):
        text = f.read_text("utf-8", "replace")
        for m in re.finditer(r"panicked at ([^\n]*):\n([^\n]*)", text):
            where = re.sub(r"^.*/(registry/src/[^/]+/|rustc/[0-9a-f]+/)", "", m.group(1))
            frame = ""
            tail = text[m.end():m.end() + 6000]
            # the first frame of interest in the backtrace, if there is one
            fm = re.search(r"\d+:\s+(?:0x[0-9a-f]+ - )?((?:deno_|outpost)\w*::[\w:<>]+)", tail)
            if fm:
                frame = " in " + re.sub(r"::h[0-9a-f]{16}$", "", fm.group(1))
            key = f"{m.group(2).strip()} (at {where}{frame})"
            counts[key] = counts.get(key, 0) + 1
    return sorted(((n, k) for k, n in counts.items()), reverse=True)


def deno_version(deno: str) -> str:
    try:
        out = subprocess.run([deno, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip()
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def run_deno(deno: str, apps: Path, logs: Path, runs: list[Run], jobs: int, port_wpt: int):
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1", DENO_NO_PROMPT="1")
    listen = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)/")
    (logs / "deno").mkdir(exist_ok=True)

    def one(run: Run):
        url = test_url(run, port_wpt)
        out_log = logs / "deno" / f"{run.app}.log"
        cmd = [deno, "serve", "--port", "0", "--host", "127.0.0.1", "-A", "--location", url,
               str(apps / run.app / "worker.js")]
        with open(out_log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=apps / run.app)
        try:
            m = wait_for_line(out_log, listen, proc, 60)
            if not m:
                tail = out_log.read_text("utf-8", "replace")[-1000:]
                run.results["deno"] = harness_error(f"deno serve did not start: {tail.strip()}")
                return run
            port = int(m.group(1))
            result = request(port, f"127.0.0.1:{port}", client_timeout(run))
            if result["harness"]["status"] == "ERROR" and not result["tests"] and proc.poll() is not None:
                tail = out_log.read_text("utf-8", "replace")[-600:].strip()
                result["harness"]["message"] += f" (deno exited {proc.returncode}: {tail})"
            run.results["deno"] = result
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        return run

    progress(runs, jobs, one, "deno")


def progress(runs: list[Run], jobs: int, fn, engine: str):
    start = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, r) for r in runs]
        for fut in concurrent.futures.as_completed(futures):
            run = fut.result()
            done += 1
            res = run.results.get(engine, {})
            tests = res.get("tests", [])
            passed = sum(1 for t in tests if t.get("status") == "PASS")
            h = res.get("harness", {}).get("status")
            note = "" if h == "OK" else f" harness {h}: {str(res['harness'].get('message'))[:150]}"
            log(f"[{engine} {done}/{len(runs)} {time.monotonic() - start:.0f}s] {run.key}: "
                f"{passed}/{len(tests)}{note}")


# --------------------------------------------------------------------------------------------
# Results, expectations, report


def normalize(message, ports: dict[str, int], limit: int | None = MESSAGE_CHARS) -> str:
    if message is None:
        return ""
    text = str(message)
    for name, port in ports.items():
        for host in WPT_HOSTS:
            text = text.replace(f"{host}:{port}", f"{host}:<{name}>")
    text = re.sub(r"/[\w/.-]*/outpost-wpt-[\w]+", "<work>", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit] if limit else text


def normalize_name(name, ports: dict[str, int]) -> str:
    """A subtest name without the WPT server's port (some names contain a URL)."""
    text = str(name)
    for label, port in ports.items():
        for host in WPT_HOSTS:
            text = text.replace(f"{host}:{port}", f"{host}:<{label}>")
    return text


def failures(result: dict, ports) -> dict[str, dict]:
    """Subtests that did not PASS (and the harness, if not OK): name -> {status, message}."""
    out = {}
    for t in result.get("tests", []):
        if t.get("status") != "PASS":
            out[normalize_name(t.get("name"), ports)] = {"status": t.get("status") if t.get("status") in STATUSES else "FAIL",
                                       "message": normalize(t.get("message"), ports)}
    h = result.get("harness", {})
    if h.get("status") != "OK":
        out[HARNESS_ENTRY] = {"status": "HARNESS",
                              "message": normalize(f"{h.get('status')}: {h.get('message')}", ports)}
    return out


def tally(run: Run, engines: list[str]) -> tuple[int, dict[str, int]]:
    """Subtests of a run (the union of names over engines; a run with none counts as one) and
    each engine's passes."""
    names: set[str] = set()
    for e in engines:
        names |= {str(t.get("name")) for t in run.results[e].get("tests", [])}
    total = max(len(names), 1)
    passed = {}
    for e in engines:
        passed[e] = len({str(t.get("name")) for t in run.results[e].get("tests", [])
                         if t.get("status") == "PASS"})
    return total, passed


def load_expectations() -> dict:
    if EXPECTATIONS.is_file():
        return json.loads(EXPECTATIONS.read_text())
    return {}


def in_scope(key: str, areas: list[str] | None, substr: str | None) -> bool:
    path = key.split("?")[0]
    area = area_of(path)
    if area is None:
        return False
    if areas and area.lower() not in {a.lower() for a in areas}:
        return False
    return substr is None or substr in key


def update_expectations(old: dict, runs: list[Run], ports, areas, substr) -> dict:
    ran = {r.key for r in runs}
    new = {k: v for k, v in old.items() if k not in ran and not in_scope(k, areas, substr)}
    for r in runs:
        fails = failures(r.results["outpost"], ports)
        if not fails:
            continue
        prev = old.get(r.key, {})
        new[r.key] = {
            name: {"status": f["status"],
                   "reason": prev.get(name, {}).get("reason", "unexamined"),
                   "message": f["message"]}
            for name, f in fails.items()
        }
    return new


def check_expectations(old: dict, runs: list[Run], ports):
    regressions, fixed, gone = [], [], []
    for r in runs:
        fails = failures(r.results["outpost"], ports)
        expected = old.get(r.key, {})
        for name, f in fails.items():
            if name not in expected:
                regressions.append((r.key, name, f["status"], f["message"]))
        seen = {normalize_name(t.get("name"), ports) for t in r.results["outpost"].get("tests", [])}
        for name in expected:
            if name in fails:
                continue
            if name == HARNESS_ENTRY or name in seen:
                fixed.append((r.key, name))
            else:
                gone.append((r.key, name))
    return regressions, fixed, gone


def pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}%" if d else "-"


def table(runs: list[Run], window_only: dict[str, str], engines: list[str]) -> list[str]:
    head = ["area", "WPT path", "files", "runs", "subtests"]
    for e in engines:
        label = "Outpost" if e == "outpost" else "Deno"
        head += [f"{label} passed", f"{label} %"]
    rows = [head, ["---"] * 2 + ["---:"] * (len(head) - 2)]
    grand = {"files": 0, "runs": 0, "subtests": 0, **{e: 0 for e in engines}}
    for name, _, prefixes in AREAS:
        mine = [r for r in runs if r.area == name]
        if not mine:
            continue
        files = len({r.path for r in mine})
        total = 0
        passed = {e: 0 for e in engines}
        for r in mine:
            t, p = tally(r, engines)
            total += t
            for e in engines:
                passed[e] += p[e]
        row = [name, ", ".join(prefixes), str(files), str(len(mine)), str(total)]
        for e in engines:
            row += [str(passed[e]), pct(passed[e], total)]
        rows.append(row)
        grand["files"] += files
        grand["runs"] += len(mine)
        grand["subtests"] += total
        for e in engines:
            grand[e] += passed[e]
    row = ["**total**", "", str(grand["files"]), str(grand["runs"]), str(grand["subtests"])]
    for e in engines:
        row += [f"**{grand[e]}**", f"**{pct(grand[e], grand['subtests'])}**"]
    rows.append(row)
    return ["| " + " | ".join(r) + " |" for r in rows]


def reasons_section(expectations: dict, runs: list[Run], ports) -> list[str]:
    counts: dict[str, list] = {}
    for r in runs:
        exp = expectations.get(r.key, {})
        for name, f in failures(r.results["outpost"], ports).items():
            reason = exp.get(name, {}).get("reason", "unexamined")
            entry = counts.setdefault(reason, [0, set(), []])
            entry[0] += 1
            entry[1].add(r.key)
            if len(entry[2]) < 2:
                entry[2].append(f"`{r.key}` / {name[:100]}")
    lines = ["| reason | subtests | runs | e.g. |", "|---|---:|---:|---|"]
    for reason, (n, keys, examples) in sorted(counts.items(), key=lambda kv: -kv[1][0]):
        ex = "<br>".join(e.replace("|", "\\|") for e in examples)
        lines.append(f"| {reason.replace('|', '/')} | {n} | {len(keys)} | {ex} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wpt-dir", default=os.environ.get("WPT_DIR"),
                    help="a web-platform-tests checkout at tests/wpt/WPT_COMMIT (or $WPT_DIR)")
    ap.add_argument("--outpost", default=str(REPO / "target" / "debug" / "outpost"))
    ap.add_argument("--deno", help="also run every test on this deno binary, for comparison")
    ap.add_argument("--area", action="append", help="only this area (repeatable); see AREAS")
    ap.add_argument("--filter", help="only runs whose key (path[?variant]) contains this")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--update", action="store_true", help="rewrite expectations.json from this run")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a subtest fails that expectations.json does not list")
    ap.add_argument("--timeout-multiplier", type=float, default=1.0,
                    help="multiply the harness timeouts (10 s, 30 s for timeout=long), e.g. for a "
                         "slow machine; the expectations are made with 1")
    ap.add_argument("--keep", action="store_true", help="keep the generated apps")
    ap.add_argument("--static-server", action="store_true",
                    help="serve the WPT files with the runner's static server instead of "
                         "wptserve (the default when the checkout has tools/): no Python "
                         "handlers, so the subtests that need one fail")
    ap.add_argument("--from-logs", metavar="DIR",
                    help="run nothing: redo the report (and --update/--check) from an earlier "
                         "run's logs directory (its results.json and run.json), e.g. after "
                         "writing reasons into expectations.json")
    ap.add_argument("--list", action="store_true", help="list the runs and exit")
    args = ap.parse_args()
    if not args.wpt_dir:
        ap.error("--wpt-dir (or $WPT_DIR) is required")
    wpt = Path(args.wpt_dir).resolve()
    if not (wpt / "resources" / "testharness.js").is_file():
        sys.exit(f"{wpt} is not a WPT checkout (no resources/testharness.js)")

    if args.from_logs:
        logs = Path(args.from_logs).resolve()
        meta = json.loads((logs / "run.json").read_text())
        results = json.loads((logs / "results.json").read_text())
        args.area, args.filter = meta["area"], meta["filter"]
        runs, window_only = discover(wpt, args.area, args.filter)
        runs = [r for r in runs if r.key in results]
        for r in runs:
            r.app = results[r.key]["app"]
            r.results = {e: results[r.key][e] for e in meta["engines"]}
        return finish(args, runs, window_only, meta, logs)

    runs, window_only = discover(wpt, args.area, args.filter)
    if args.list:
        for r in runs:
            print(f"{r.area:24} {r.key}")
        print(f"{len(runs)} runs; {len(window_only)} files not applicable (window- or ShadowRealm-only)")
        return 0
    if not runs:
        sys.exit("nothing to run")
    binary = Path(args.outpost).resolve()
    for _ in range(60):  # another build may be replacing it right now
        if binary.is_file():
            break
        log(f"waiting for {binary} to appear...")
        time.sleep(5)
    else:
        sys.exit(f"no outpost binary at {binary}")

    built = datetime.datetime.fromtimestamp(binary.stat().st_mtime, datetime.timezone.utc)
    built = built.strftime("%Y-%m-%d %H:%M UTC")
    if args.timeout_multiplier != 1.0:
        for k in HARNESS_TIMEOUT_S:
            HARNESS_TIMEOUT_S[k] = HARNESS_TIMEOUT_S[k] * args.timeout_multiplier
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="outpost-wpt-"))
    apps, logs = work / "apps", work / "logs"
    apps.mkdir()
    logs.mkdir()
    server = start_wpt_server(wpt, logs, args.static_server)
    try:
        port_wpt = server.port
        log(f"WPT files served ({server.kind}) at http://127.0.0.1:{port_wpt}/ from {wpt}; "
            f"work dir {work}")
        for i, r in enumerate(runs):
            r.app = f"wpt{i:04d}"
            write_app(apps, r, wpt, port_wpt)
        log(f"{len(runs)} runs ({len(window_only)} files not applicable (window- or ShadowRealm-only))")

        engines = ["outpost"]
        crashes = run_outpost(binary, apps, logs, runs, args.jobs)
        t_outpost = time.monotonic() - started
        deno_ver = None
        if args.deno:
            engines.append("deno")
            deno_ver = deno_version(args.deno)
            run_deno(args.deno, apps, logs, runs, args.jobs, port_wpt)
        elapsed = time.monotonic() - started
    finally:
        server.stop()

    meta = {
        "engines": engines, "area": args.area, "filter": args.filter, "elapsed": elapsed,
        "t_outpost": t_outpost, "crashes": crashes, "deno": deno_ver, "jobs": args.jobs,
        "server": server.kind, "ports": server.ports,
        "binary": str(binary), "built": built, "argv": sys.argv[1:],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (logs / "results.json").write_text(json.dumps(
        {r.key: {"area": r.area, "app": r.app, **r.results} for r in runs}, indent=1))
    (logs / "run.json").write_text(json.dumps(meta, indent=1))
    code = finish(args, runs, window_only, meta, logs)
    if not args.keep:
        shutil.rmtree(apps, ignore_errors=True)
    return code


def finish(args, runs: list[Run], window_only: dict[str, str], meta: dict, logs: Path) -> int:
    """The table, --check, --update and report.md, from a run's results."""
    engines, elapsed, t_outpost = meta["engines"], meta["elapsed"], meta["t_outpost"]
    crashes, deno_ver, ports = meta["crashes"], meta["deno"], meta["ports"]
    binary, built = Path(meta["binary"]), meta["built"]

    lines = table(runs, window_only, engines)
    print("\n".join(lines))
    errored = [r for r in runs if r.results["outpost"]["harness"]["status"] not in ("OK",)]
    print(f"\n{len(runs)} runs in {elapsed:.0f}s (Outpost {t_outpost:.0f}s); "
          f"{len(errored)} with a harness status other than OK on Outpost; "
          f"logs and raw results in {logs}")
    for why in crashes:
        print(f"CRASH: {why}")
    panic_list = panics(logs)
    for n, what in panic_list:
        print(f"PANIC x{n}: {what}")

    old = load_expectations()
    code = 0
    if args.check:
        regressions, fixed, gone = check_expectations(old, runs, ports)
        for key, name, status, msg in regressions:
            print(f"REGRESSION {key} :: {name}: {status} {msg}")
        for key, name in fixed:
            print(f"NOW PASSES (remove from expectations) {key} :: {name}")
        for key, name in gone:
            print(f"NOT SEEN (remove from expectations) {key} :: {name}")
        print(f"{len(regressions)} regressions, {len(fixed)} expectations now pass, "
              f"{len(gone)} expected subtests not seen")
        if regressions:
            code = 1
            log(f"outpost log: {logs / 'outpost.stderr.log'}")
    current = old
    if args.update:
        current = update_expectations(old, runs, ports, args.area, args.filter)
        EXPECTATIONS.write_text(json.dumps(current, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        print(f"wrote {EXPECTATIONS.relative_to(REPO)}")

    full = not args.area and not args.filter
    if full:
        cmd = "python3 tests/wpt/run.py " + shlex.join(meta["argv"])
        commit = WPT_COMMIT_FILE.read_text().strip() if WPT_COMMIT_FILE.is_file() else "?"
        md = [
            "# Web-platform-tests on Outpost",
            "",
            f"- WPT commit: `{commit}` (only `*.any.js`, run in their worker flavour; see README.md)",
            f"- Date: {meta['date']}",
            f"- Command: `{cmd}`",
            f"- Outpost: `{binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary}`"
            f" (built {built})" + (f"; Deno: {deno_ver}" if deno_ver else ""),
            f"- Duration: {elapsed:.0f} s (Outpost {t_outpost:.0f} s) on {os.cpu_count()} cores, "
            f"--jobs {meta['jobs']}",
            "- WPT server: " + ("wptserve (the checkout's tools/serve; see README.md)"
                                if meta.get("server") == "wptserve" else
                                "the runner's static file server (no Python handlers)"),
            f"- {len(runs)} runs of {len({r.path for r in runs})} files; "
            f"{len(window_only)} files not applicable (window- or ShadowRealm-only)",
            "",
            "A run is a file or one `?variant` of it. Subtests are the union of the subtest names "
            "the engines reported for a run; a run that reported none counts as one failed "
            "subtest. Every subtest that does not pass on Outpost is listed in "
            "`expectations.json`.",
            "",
            *lines,
            "",
            "Not applicable (window- or ShadowRealm-only): "
            + (", ".join(f"`{p}`" for p in sorted(window_only)) or "none") + ".",
            "",
            "## Node crashes and panics",
            "",
            *([f"- crash: {normalize(c, ports, None)}" for c in crashes] or ["- no crash"]),
            *([f"- panic x{n}: {what}" for n, what in panic_list] or ["- no panic in the node's log"]),
            "",
            "## Outpost failures by reason (from expectations.json)",
            "",
            *reasons_section(current, runs, ports),
            "",
        ]
        REPORT.write_text("\n".join(md))
        print(f"wrote {REPORT.relative_to(REPO)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
