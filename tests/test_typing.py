"""The public API type-checks the way users write it (cf. psycopg tests/test_typing.py).

`typing_usage.py` must pass `mypy --strict` as it is; misuses must be caught, which
proves the package's types reach the user (py.typed, no stray `Any`).
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from decimal import Decimal
from pathlib import Path

from mypy import api

from tests import typing_usage

HERE = Path(__file__).parent
ROOT = HERE.parent


def mypy(*args: str) -> tuple[str, int]:
    stdout, stderr, status = api.run(
        ["--strict", "--config-file", str(ROOT / "pyproject.toml"), *args]
    )
    return stdout + stderr, status


def test_the_usage_file_passes_mypy_strict() -> None:
    output, status = mypy(str(HERE / "typing_usage.py"))
    assert status == 0, output
    assert "Success" in output


# Each line must be rejected; the comment is the error code mypy reports.
MISUSES = """
from datetime import datetime
from decimal import Decimal
from tenantstore import (
    BudgetGuard, InMemoryTenantRepository, InMemoryUsageRepository, InvalidInput,
    KeyCipher, Tenant, TenantRepository, hash_api_key,
)

repo = InMemoryTenantRepository()
hash_api_key(b"tsk_key")  # arg-type
Tenant(name="Acme")  # call-arg
tenant = repo.get_by_id("x")
tenant.name = "Renamed"  # misc
budget: float = tenant.budget_usd  # assignment
repo.create(tenant, "tsk_key")  # call-arg
not_a_repo: TenantRepository = object()  # assignment
InMemoryUsageRepository(object())  # arg-type
usage = InMemoryUsageRepository(repo)
cost: int = usage.get_tenant_total_cost("x", datetime.now())  # assignment
KeyCipher({"k": "not bytes"})  # dict-item
field: int = InvalidInput("name", "blank").field  # assignment
guard = BudgetGuard(repo, usage)
guard.reserve(tenant, Decimal("0.1")).settle("r1")  # arg-type
spent: int = guard.status(tenant).spent_usd  # assignment
"""


def test_misuses_are_caught(tmp_path: Path) -> None:
    code = textwrap.dedent(MISUSES)
    misuses = tmp_path / "misuses.py"
    misuses.write_text(code)
    output, status = mypy(str(misuses))
    assert status == 1, output
    expected = {
        number: line.rsplit("# ", 1)[1]
        for number, line in enumerate(code.splitlines(), start=1)
        if "  # " in line
    }
    reported: dict[int, set[str]] = {}
    for match in re.finditer(
        r"^\S*misuses\.py:(\d+): error: .*\[([a-z-]+)\]$", output, re.M
    ):
        reported.setdefault(int(match[1]), set()).add(match[2])
    assert set(reported) == set(expected), output
    for number, code_name in expected.items():
        assert code_name in reported[number], (number, output)


def test_the_usage_file_runs() -> None:
    assert typing_usage.in_memory_gateway() == Decimal("0.5125000000")
    assert asyncio.run(typing_usage.async_in_memory_gateway()) == Decimal("1.25")
    assert typing_usage.operators() == ["UPDATE", "INSERT"]
    assert typing_usage.budgeted_gateway() == (
        ["warning", "critical", "exceeded"],
        Decimal("1.00"),
    )
    assert asyncio.run(typing_usage.async_budgeted_gateway()) == Decimal("1.25")
