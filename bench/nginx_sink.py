"""A sink homeserver in nginx, for the multi-process bench (``bench/proxy_load.py --nodes``).

The sink of bench/proxy_load.py is one aiohttp process: about 150 µs of CPU
per reading, a third of a core at 2,000 readings/s. On the 2-core machine that
is CPU the second proxy process cannot have, so the ``--nodes`` ratio measured
the machine, not the proxies (docs/scale-out.md). nginx answers the same
requests from its configuration alone, with HTTP/1.1 keep-alive, at a few µs
each:

* ``PUT /_matrix/client/v3/rooms/R/send/T/TXN`` -> 200 ``{"event_id":"$TXN"}``
  (one event per transaction ID, as the aiohttp sink answers; the proxy keeps
  that pair in its sent-events table);
* ``POST /_matrix/client/v1/appservice/ID/ping`` -> 200 ``{}`` (the proxy's start);
* anything else -> 404 ``M_UNRECOGNIZED`` (the aiohttp sink's 404 too).

It stamps nothing, so the single-proxy bench's "latency the proxy adds" keeps
the aiohttp sink; ``reset`` is a no-op here. nginx runs as in
bench/nginx_tls.py: a temporary prefix directory, ``daemon off``, its own
process group; one worker process (the sink is not what is measured).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

try:
    from bench.nginx_tls import NginxError, find_nginx
except ImportError:  # run from bench/ as a script
    from nginx_tls import NginxError, find_nginx  # type: ignore[no-redef]


def sink_config(prefix: Path, port: int) -> str:
    p = str(prefix)
    # "$" cannot be written literally before a variable name in an nginx string:
    # the geo block gives a variable whose value is "$".
    return f"""# Written by bench/nginx_sink.py; removed when the benchmark ends.
worker_processes 1;
pcre_jit on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type application/json;
    # The proxy keeps its connections: never close one under it.
    keepalive_requests 100000000;
    keepalive_timeout 600s;

    geo $dollar {{
        default "$";
    }}

    server {{
        listen 127.0.0.1:{port};
        location ~ ^/_matrix/client/v3/rooms/[^/]+/send/[^/]+/(?<txn>[^/]+)$ {{
            if ($request_method != PUT) {{
                return 405 '{{"errcode":"M_UNRECOGNIZED","error":"method"}}';
            }}
            return 200 '{{"event_id":"${{dollar}}${{txn}}"}}';
        }}
        location ~ ^/_matrix/client/v1/appservice/[^/]+/ping$ {{
            return 200 '{{}}';
        }}
        # Requests served so far (``NginxSink.requests``): the bench checks each
        # counted reading made its HTTP request.
        location = /_nginx_status {{
            stub_status;
        }}
        location / {{
            return 404 '{{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}}';
        }}
    }}
}}
"""


class NginxSink:
    """nginx answering sends on 127.0.0.1:``port`` (the interface of ``proxy_load.Sink``)."""

    kind = "nginx"

    def __init__(self, nginx: str | None = None, start_timeout: float = 15.0) -> None:
        self.nginx = nginx or find_nginx()
        if self.nginx is None:
            raise NginxError("nginx is not installed (Debian: apt-get install nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix="lowbw-nginx-sink-"))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            (self.dir / "tmp").mkdir()
            conf = self.dir / "nginx.conf"
            conf.write_text(sink_config(self.dir, self.port))
            with open(self.dir / "stderr.log", "wb") as stderr:
                self._proc = subprocess.Popen(
                    [self.nginx, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]
                    + ["-g", "daemon off;"],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                )
            deadline = time.monotonic() + start_timeout
            while True:
                if self._proc.poll() is not None:
                    raise NginxError("nginx exited with status %d" % self._proc.returncode)
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise NginxError("nginx did not listen on port %d" % self.port) from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def pids(self) -> list[int]:
        """nginx's master and worker (their CPU is the sink's)."""
        if self._proc is None:
            return []
        return [self._proc.pid, *children(self._proc.pid)]

    def requests(self) -> int:
        """Requests nginx has answered since it started (this one included)."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + "/_nginx_status", timeout=10) as resp:
            text = resp.read().decode()
        # "Active connections: N \nserver accepts handled requests\n A H R \n..."
        return int(text.splitlines()[2].split()[2])

    def reset(self) -> None:
        """Nothing to forget: nginx keeps no stamps."""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        shutil.rmtree(self.dir, ignore_errors=True)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc: the processes whose parent chain reaches it)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry)] = ppid
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found
