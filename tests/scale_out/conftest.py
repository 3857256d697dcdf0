"""Fixtures for the scale-out test: Synapse and an appservice registration of its own.

Imported from tests/proxy/conftest.py, so pytest makes separate session fixtures
here: the two proxy nodes bind the registration's push port with SO_REUSEPORT,
and the end-to-end stack's proxy (tests/e2e, package scope) holds the e2e
registration's port until its package ends, without SO_REUSEPORT.
"""

from __future__ import annotations

from tests.proxy.conftest import (  # noqa: F401  (fixtures, registered by import)
    appservice,
    synapse,
)
