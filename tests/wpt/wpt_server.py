#!/usr/bin/env python3
"""Serve a WPT checkout with WPT's own server (wptserve, as `tools/serve` configures it), for
tests/wpt/run.py.

    python3 tests/wpt/wpt_server.py --wpt-dir /work/wpt

Started by run.py as a child process. It imports wptserve and its vendored dependencies from
the checkout (`tools/localpaths.py`; nothing from PyPI), starts the plain-HTTP servers of
wptserve's config on 127.0.0.1 only, at free ports picked now, with the stash (the shared
store the Python handlers use), then prints ONE line of JSON on stdout:

    {"host": "127.0.0.1", "alt_host": "localhost", "ports": {"http": [p0, p1], ...}, ...}

and serves until its stdin closes (run.py exits or dies) or it gets SIGTERM/SIGINT. Its log
(wptserve's, level INFO: errors of Python handlers among them) goes to stderr.

What differs from `./wpt serve` (tools/serve/serve.py's run()):
- Hosts. `web-platform.test` and its subdomains do not resolve here (no /etc/hosts entries),
  so the browser host is 127.0.0.1 (`{{host}}`, the test URLs' host) and every other host
  of the config, `{{domains[www]}}`, `{{hosts[alt][]}}`, `{{hosts[alt][www1]}}`..., is
  `localhost`: another origin on the same servers, which resolves. The "not" domains
  (`{{domains[nonexistent]}}`) are `nonexistent.invalid` and the like, which never resolve.
  The subdomain check of `./wpt serve` is not done.
- Ports. Every port is "auto" (a free port, chosen by wptserve's own `get_port`, which skips
  the ports fetch blocks). Only the plain-HTTP servers listen: `http` (two: `ports[http][0]`
  and `ports[http][1]`), `http-private`, `http-public`. The https, h2, ws, wss and
  webtransport ports are in the config, so templates such as `{{ports[https][0]}}` resolve,
  but nothing listens there: a fetch to them fails to connect. (Neither engine would trust
  WPT's test CA for 127.0.0.1 anyway.)
- The servers run as threads of this one process (upstream forks one process per server); the
  stash is a multiprocessing manager on a Unix socket.
- A 1xx, 204 or 304 response is sent without the content its handler gave it (e.g.
  fetch/api/resources/status.py?code=204&content=hello-world). HTTP/1.1 says such a response
  ends with its headers (RFC 9112, 6.3); wptserve sends the content anyway, and a client that
  keeps the connection alive reads those bytes as the start of its next response there, which
  then fails ("fetch failed" in some other subtest, depending on connection reuse: flaky).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import uuid

HOST = "127.0.0.1"        # browser_host and server_host: {{host}}, and where everything listens
ALT_HOST = "localhost"    # every other host of the config (subdomains, the "alt" host)
LISTENING = ("http", "http-private", "http-public")  # schemes that get a server
ALL_SCHEMES = {           # scheme -> number of ports (what tools/serve's config has)
    "http": 2, "http-private": 1, "http-public": 1, "https": 2, "https-private": 1,
    "https-public": 1, "h2": 1, "ws": 1, "wss": 1, "webtransport-h3": 1,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wpt-dir", required=True, help="the WPT checkout (with tools/)")
    ap.add_argument("--log-level", default="info", help="wptserve's log level (debug logs requests)")
    args = ap.parse_args()
    wpt = os.path.abspath(args.wpt_dir)
    tools = os.path.join(wpt, "tools")
    if not os.path.isfile(os.path.join(tools, "serve", "serve.py")):
        print(f"{wpt} has no tools/serve/serve.py", file=sys.stderr)
        return 2
    sys.path.insert(0, tools)
    import localpaths  # noqa: F401  (puts wptserve and tools/third_party on sys.path)
    from serve import serve
    from wptserve import response, stash
    from wptserve.utils import get_port

    write_content = response.Response.write_content

    def write_content_unless_bodiless(self):
        code = self.status[0]
        if 100 <= code < 200 or code in (204, 304):
            return
        write_content(self)

    response.Response.write_content = write_content_unless_bodiless  # not H2Response's

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="[%(asctime)s %(threadName)s] %(levelname)s - %(message)s")
    logger = logging.getLogger()

    class ConfigBuilder(serve.ConfigBuilder):
        def _get_ports(self, data):
            # Keep the TLS schemes' ports although TLS is off (templates name them), and make
            # every port distinct.
            taken: set[int] = set()

            def free():
                port = get_port(HOST)
                while port in taken:
                    port = get_port(HOST)
                taken.add(port)
                return port

            return {scheme: [free() if p == "auto" else p for p in ports]
                    for scheme, ports in data["ports"].items()}

        def _get_domains(self, data):
            hosts = {"": data["browser_host"], **data["alternate_hosts"]}
            return {name: {sub: ALT_HOST for sub in data["subdomains"]} | {"": host}
                    for name, host in hosts.items()}

        def _get_not_domains(self, data):
            hosts = {"": data["browser_host"], **data["alternate_hosts"]}
            return {name: {sub: sub.encode("idna").decode("ascii") + ".invalid"
                           for sub in data["not_subdomains"]}
                    for name in hosts}

    builder = ConfigBuilder(
        logger,
        browser_host=HOST,
        alternate_hosts={"alt": ALT_HOST},
        server_host=HOST,
        bind_address=True,  # bind to server_host only (False would bind every interface)
        doc_root=wpt,
        ws_doc_root=os.path.join(wpt, "websockets", "handlers"),
        ports={scheme: ["auto"] * n for scheme, n in ALL_SCHEMES.items()},
        check_subdomains=False,
        ssl={"type": "none"},
        logging={"level": args.log_level, "suppress_handler_traceback": False},
    )
    builder.inject_script = None

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with builder as config:
        routes = serve.get_route_builder(logger, config.aliases, config).get_routes()
        # address None: the manager listens on a Unix socket (no TCP port)
        with stash.StashServer(None, authkey=str(uuid.uuid4())):
            servers = []
            try:
                for scheme in LISTENING:
                    for port in config.ports[scheme]:
                        httpd = serve.start_http_server(logger, HOST, port, config.paths,
                                                        routes, True, config)
                        httpd.start()
                        servers.append(httpd)
                print(json.dumps({
                    "host": HOST, "alt_host": ALT_HOST,
                    "ports": {s: list(p) for s, p in config.ports.items()},
                    "listening": list(LISTENING), "pid": os.getpid(),
                }), flush=True)

                def wait_stdin():
                    try:
                        while sys.stdin.buffer.read(4096):
                            pass
                    except Exception:  # noqa: BLE001
                        pass
                    stop.set()

                threading.Thread(target=wait_stdin, daemon=True).start()
                while not stop.wait(1):
                    pass
            finally:
                for httpd in servers:
                    httpd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
