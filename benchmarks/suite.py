"""Every scenario, in the order a run takes them (and the table shows them)."""

from __future__ import annotations

from benchmarks import (
    scenarios_admin,
    scenarios_async,
    scenarios_budget,
    scenarios_cache,
    scenarios_gateway,
    scenarios_migrate,
    scenarios_pipeline,
    scenarios_revocation,
    scenarios_tenants,
    scenarios_usage,
)
from benchmarks.scenario import Scenario

__all__ = ["SCENARIOS", "by_name"]

SCENARIOS: tuple[Scenario, ...] = (
    *scenarios_cache.SCENARIOS,
    *scenarios_revocation.SCENARIOS,
    *scenarios_tenants.SCENARIOS,
    *scenarios_usage.SCENARIOS,
    *scenarios_pipeline.SCENARIOS,
    *scenarios_budget.SCENARIOS,
    *scenarios_async.SCENARIOS,
    *scenarios_gateway.SCENARIOS,
    *scenarios_migrate.SCENARIOS,
    *scenarios_admin.SCENARIOS,
)


def by_name() -> dict[str, Scenario]:
    return {s.name: s for s in SCENARIOS}
