"""Fixture plugins and hypothesis profiles; the fixtures live in tests/fix_*.py."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fix_postgres", "tests.fix_pgbouncer"]

# `ci`: a fixed, derandomized budget so the suite's length and outcome are stable.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("TENANTSTORE_CI_EXAMPLES", "300")),
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.register_profile(
    "deep",
    max_examples=5000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)
