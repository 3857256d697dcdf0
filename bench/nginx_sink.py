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
from pathlib import Path

try:
    from bench.nginx_tls import Nginx, NginxError, config_prelude
except ImportError:  # run from bench/ as a script
    from nginx_tls import Nginx, NginxError, config_prelude  # type: ignore[no-redef]


def sink_config(prefix: Path, port: int) -> str:
    # "$" cannot be written literally before a variable name in an nginx string:
    # the geo block gives a variable whose value is "$".
    return (
        config_prelude(prefix, "bench/nginx_sink.py", 1024, extra="pcre_jit on;\n")
        + f"""
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
    )


class NginxSink(Nginx):
    """nginx answering sends on 127.0.0.1:``port`` (the interface of ``proxy_load.Sink``);
    running once made."""

    kind = "nginx"
    dir_prefix = "lowbw-nginx-sink-"

    def __init__(self, nginx: str | None = None, start_timeout: float = 15.0) -> None:
        super().__init__(nginx=nginx, start_timeout=start_timeout)
        self.start()

    def write_config(self, directory: Path, port: int) -> str:
        return sink_config(directory, port)

    @property
    def url(self) -> str:
        if self.port is None:
            raise NginxError("the nginx sink is not running")
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
