"""Reading a proxy's ``/metrics`` as Prometheus does: HTTP, then prometheus-client's text parser."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http_get(
    url: str, token: str | None = None, basic: str | None = None, **headers: str
) -> tuple[int, Any, bytes]:
    """(status, headers, body) of a GET; errors are answers too."""
    req = urllib.request.Request(url, method="GET")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    if basic is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
    for key, value in headers.items():
        req.add_header(key.replace("_", "-"), value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def scrape(url: str, token: str | None = None) -> Samples:
    """Every sample of ``url`` (``.../metrics``), keyed by (sample name, labels)."""
    status, _, body = http_get(url, token)
    assert status == 200, body
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def wait_for(
    url: str, check: Callable[[Samples], bool], timeout: float = 15.0, token: str | None = None
) -> Samples:
    """Scrape until ``check`` holds (counters that move after the answer, e.g. a push)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url, token)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError("metrics never satisfied the check")
        time.sleep(0.1)
