"""Fixtures for the end-to-end tests: the real stack, scenarios run side by side.

The Synapse and appservice fixtures are the proxy engineers' (tests/proxy/conftest.py),
imported so pytest registers them here too. ``runs`` (package scope) starts, at
its first use, every scenario named by a selected test's
``@pytest.mark.e2e_scenario(name)`` marker, each in its own thread with its own
devices and radios, and the shared proxy process when a scenario needs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import SCENARIOS, Env, Runs
from tests.proxy.conftest import (  # noqa: F401  (fixtures, registered by import)
    SERVER_NAME,
    appservice,
    synapse,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e_scenario(name): the end-to-end scenario a test checks")


def _selected(session: pytest.Session) -> list[str]:
    names: list[str] = []
    for item in session.items:
        for mark in item.iter_markers("e2e_scenario"):
            name = mark.args[0]
            if name in SCENARIOS and name not in names:
                names.append(name)
    return names


@pytest.fixture(scope="package")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    names = _selected(request.session)
    # The devices run exactly what a board freezes: the device build (firmware/build.py).
    from firmware.build import ensure_built

    ensure_built()
    env = None
    if any(SCENARIOS[n][1] for n in names):
        env = Env(tmp_path_factory.mktemp("e2e"))
        try:
            env.start(request.getfixturevalue("synapse"), request.getfixturevalue("appservice"), SERVER_NAME)
        except BaseException:
            env.close()
            raise
    started = Runs(env, names)
    try:
        yield started
    finally:
        # Processes first: a scenario still waiting on one then ends at once.
        if env is not None:
            env.close()
        started.close()
