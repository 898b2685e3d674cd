"""Admin logins: a refusal takes the time of any other (`authenticate`).

`authenticate` refuses a wrong password, an unknown user and a disabled user with
the same `InvalidCredentials` after the same work, one bcrypt verification at the
cost hashes are written with (10): an unknown user's password is checked against a
dummy hash. Ours is the wrong password; the rows are the other refusals and a
successful login, measured interleaved on PostgreSQL. A ratio near 1 means the time
does not tell which refusal it was (the targets bound how much faster the others
may be). Every result is checked: the refusals refuse, the login logs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from benchmarks.measure import CheckFailed, Target, Variant, per_call
from benchmarks.scenario import Context, Scenario, cycle
from tenantstore import (
    AdminUser,
    InvalidCredentials,
    PostgresAdminUserRepository,
    create_pool,
)

__all__ = ["SCENARIOS"]

ALIKE = Target(1.10, "≤ 1.10x")
PASSWORD = "correct horse battery staple"


def _attempt(
    admins: PostgresAdminUserRepository, password: str
) -> Callable[[str], str]:
    def attempt(username: str) -> str:
        try:
            admins.authenticate(username, password)
        except InvalidCredentials:
            return "refused"
        return "accepted"

    return attempt


def _expect(outcome: str) -> Callable[[str, str], None]:
    def check(username: str, result: str) -> None:
        if result != outcome:
            raise CheckFailed(f"{username}: expected {outcome}, got {result}")

    return check


@contextlib.contextmanager
def admin_refusal(ctx: Context) -> Iterator[list[Variant]]:
    url = ctx.data.lookup().url
    with create_pool(url, min_size=1, max_size=2) as pool:
        ctx.pin()
        admins = PostgresAdminUserRepository(pool, actor="benchmark")
        created: list[AdminUser] = []
        try:
            created.append(admins.create("bench-active", PASSWORD))
            disabled = admins.create("bench-disabled", PASSWORD)
            created.append(disabled)
            admins.update(
                AdminUser(id=disabled.id, username=disabled.username, enabled=False)
            )
            refused, accepted = _expect("refused"), _expect("accepted")
            yield [
                Variant(
                    "authenticate: wrong password",
                    "ours",
                    per_call(
                        _attempt(admins, "wrong password"),
                        cycle(["bench-active"]),
                        refused,
                    ),
                ),
                Variant(
                    "unknown user",
                    "reference",
                    per_call(
                        _attempt(admins, PASSWORD), cycle(["bench-nobody"]), refused
                    ),
                    ALIKE,
                ),
                Variant(
                    "disabled user, right password",
                    "reference",
                    per_call(
                        _attempt(admins, PASSWORD), cycle(["bench-disabled"]), refused
                    ),
                    ALIKE,
                ),
                Variant(
                    "right password (accepted)",
                    "reference",
                    per_call(
                        _attempt(admins, PASSWORD), cycle(["bench-active"]), accepted
                    ),
                ),
            ]
        finally:
            for user in created:
                admins.delete(user.id)


SCENARIOS = (
    Scenario(
        "admin-refusal",
        "authenticate: refusals alike (bcrypt cost 10, PostgreSQL)",
        admin_refusal,
        requires=("PostgresAdminUserRepository",),
    ),
)
