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
