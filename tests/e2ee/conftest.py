"""Encrypted-room tests share the proxy tests' real Synapse and fixtures."""

from tests.proxy.conftest import (  # noqa: F401 (fixtures)
    appservice,
    device_factory,
    matrix_user,
    proxy_config_path,
    proxy_factory,
    synapse,
    token_proxy_config_path,
)
