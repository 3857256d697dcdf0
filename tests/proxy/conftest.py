"""Fixtures for the proxy's tests: ONE real Synapse for the whole session.

Synapse takes about 3 s to start; every proxy test shares it.  It loads an
application-service registration for the proxy: exclusive user namespace
``@lowbw_.*:lowbw.test``, transactions pushed to ``appservice.url`` (a loopback
port reserved for a proxy to listen on; nothing listens unless a test does).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lowbw.testing.synapse import (
    AppserviceRegistration,
    SynapseServer,
    free_port,
    write_appservice_registration,
)

SERVER_NAME = "lowbw.test"
APPSERVICE_NAMESPACE = r"@lowbw_.*:lowbw\.test"


@dataclass(frozen=True)
class MatrixUser:
    user_id: str
    access_token: str
    password: str


@pytest.fixture(scope="session")
def appservice(tmp_path_factory: pytest.TempPathFactory) -> AppserviceRegistration:
    """The proxy's appservice registration (tokens, namespace, transaction URL)."""
    path = tmp_path_factory.mktemp("appservice") / "lowbw-proxy.yaml"
    return write_appservice_registration(
        path,
        id="lowbw-proxy",
        as_token=secrets.token_urlsafe(32),
        hs_token=secrets.token_urlsafe(32),
        url="http://127.0.0.1:%d" % free_port(),
        sender_localpart="lowbw",
        user_namespace_regex=APPSERVICE_NAMESPACE,
    )


@pytest.fixture(scope="session")
def synapse(appservice: AppserviceRegistration) -> Iterator[SynapseServer]:
    """A running Synapse (SQLite, loopback, plain HTTP) with the proxy's appservice loaded."""
    with SynapseServer(server_name=SERVER_NAME, app_service_config_files=[appservice.path]) as server:
        rss = server.rss_bytes() or 0
        print(
            "\nsynapse %s: started in %.2f s, RSS %.0f MB"
            % (server.url, server.start_seconds or 0.0, rss / 1e6)
        )
        yield server


@pytest.fixture
def matrix_user(synapse: SynapseServer) -> MatrixUser:
    """A fresh ordinary (non-appservice) user with an access token."""
    password = secrets.token_urlsafe(16)
    user_id, token = synapse.register_user("user_%s" % secrets.token_hex(6), password)
    return MatrixUser(user_id, token, password)
