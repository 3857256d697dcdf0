"""Shared pytest configuration."""

from hypothesis import HealthCheck, settings

# Property tests run in every `make test`; keep them bounded so the whole suite
# stays well under 15 minutes on 2 cores.
settings.register_profile(
    "lowbw",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("lowbw")


# ---- PostgreSQL (the registry's second engine; lowbw.testing.postgres) --------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """One real PostgreSQL server for the session (initdb + pg_ctl on a temporary
    directory, a free port on 127.0.0.1); skipped where PostgreSQL is not installed."""
    from lowbw.testing.postgres import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap.sh installs Debian's postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database on the session's PostgreSQL."""
    url: str = postgres.new_database()
    return url
