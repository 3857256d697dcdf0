"""Fixtures for the LoRaWAN tests: the adapters' real mosquitto and the proxy's real Synapse."""

from tests.adapters.conftest import (  # noqa: F401  (fixtures, registered by import)
    EnrolledDevice,
    MatrixUser,
    appservice,
    device_factory,
    enroll_device,
    matrix_call,
    matrix_user,
    mosquitto,
    proxy_config_path,
    proxy_factory,
    room_events,
    synapse,
)
