"""Admin users in PostgreSQL: `AsyncPostgresAdminUserRepository`.

The Go service's `admin_users` table, shared with it: the same columns, bcrypt
hashes either side verifies (`passwords`), the same roles (`roles`). Runs on the
tenant repositories' base (`postgres._AsyncPostgres`: pool, clock, one way to run,
errors translated); bcrypt goes through `aoffload` (a worker thread under
asyncio). Every write states the actor and time for the audit trigger, as tenant
writes do.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from .. import _sql
from .._acompat import aoffload
from .._audit import AuditEvent, actor_name, audit_params, current_actor
from .._clock import Clock
from .._models import AdminUser
from .._passwords import hash_password, verify_password
from .._rows import admin_from_row, utc
from .._validation import admin_user_for_write, is_canonical_id, is_username
from ..errors import AdminUserNotFound, Conflict, InvalidCredentials
from .postgres import ALL, COUNT, ONE, _AsyncPostgres, list_audit

__all__ = ["AsyncPostgresAdminUserRepository"]

USERNAME_TAKEN: Final = "an admin user with this id or username already exists"
REFUSED: Final = "invalid username or password"


def _not_found() -> AdminUserNotFound:
    return AdminUserNotFound("no such admin user")


class AsyncPostgresAdminUserRepository(_AsyncPostgres):
    """Admin users in PostgreSQL, through a psycopg pool (as the tenant one).

    `actor` is recorded in the audit log as who made each write, unless
    `acting_as` names someone else; `clock` stamps created_at/updated_at; `timeout`
    bounds every call as for the tenant repository.
    """

    __module__ = "tenantstore"
    __slots__ = ("_actor",)

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        clock: Clock | None = None,
        prepare: bool = True,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(pool, clock, prepare, timeout)
        self._actor = None if actor is None else actor_name(actor)

    def _context(self) -> tuple[datetime, dict[str, Any]]:
        now = utc(self._clock.now())
        return now, audit_params(current_actor(self._actor), now)

    async def _write(self, statement: str, params: dict[str, Any]) -> Any:
        try:
            return await self._run(statement, params, ONE, retry=False)
        except Conflict as exc:
            # The shared translation speaks of tenants; this is a username.
            raise Conflict(USERNAME_TAKEN) from exc.__cause__

    async def create(
        self, username: str, password: str, role: str = "viewer"
    ) -> AdminUser:
        user = admin_user_for_write(AdminUser(username=username, role=role))
        password_hash = await aoffload(hash_password, password)
        now, params = self._context()
        params.update(
            id=user.id,
            username=user.username,
            password_hash=password_hash,
            role=user.role,
            enabled=user.enabled,
            now=now,
        )
        row = await self._write(_sql.INSERT_ADMIN, params)
        assert row is not None
        return admin_from_row(row)

    async def authenticate(self, username: str, password: str) -> AdminUser:
        row = None
        if is_username(username):
            row = await self._run(
                _sql.SELECT_ADMIN_LOGIN, {"username": username}, ONE, retry=True
            )
        # One verification whatever was found: against the user's hash, or the
        # dummy when there is none (verify_password), disabled users included.
        stored = None if row is None else row[-1]
        matches = await aoffload(verify_password, password, stored)
        if row is None or not matches or not row[3]:
            raise InvalidCredentials(REFUSED)
        return admin_from_row(row)

    async def get_by_id(self, user_id: str) -> AdminUser:
        if not is_canonical_id(user_id):
            raise _not_found()
        row = await self._run(_sql.SELECT_ADMIN_BY_ID, {"id": user_id}, ONE, retry=True)
        if row is None:
            raise _not_found()
        return admin_from_row(row)

    async def get_by_username(self, username: str) -> AdminUser:
        if not is_username(username):
            raise _not_found()
        row = await self._run(
            _sql.SELECT_ADMIN_BY_USERNAME, {"username": username}, ONE, retry=True
        )
        if row is None:
            raise _not_found()
        return admin_from_row(row)

    async def list(self) -> builtins.list[AdminUser]:
        rows = await self._run(_sql.SELECT_ADMIN_ALL, None, ALL, retry=True)
        return [admin_from_row(row) for row in rows]

    async def update(self, user: AdminUser) -> AdminUser:
        user = admin_user_for_write(user)
        now, params = self._context()
        params.update(
            id=user.id,
            username=user.username,
            role=user.role,
            enabled=user.enabled,
            now=now,
        )
        row = await self._write(_sql.UPDATE_ADMIN, params)
        if row is None:
            raise _not_found()
        return admin_from_row(row)

    async def set_password(self, user_id: str, password: str) -> AdminUser:
        password_hash = await aoffload(hash_password, password)
        if not is_canonical_id(user_id):
            raise _not_found()
        now, params = self._context()
        params.update(id=user_id, password_hash=password_hash, now=now)
        row = await self._write(_sql.SET_ADMIN_PASSWORD, params)
        if row is None:
            raise _not_found()
        return admin_from_row(row)

    async def delete(self, user_id: str) -> None:
        if not is_canonical_id(user_id):
            raise _not_found()
        _, params = self._context()
        params["id"] = user_id
        deleted = await self._run(_sql.DELETE_ADMIN, params, COUNT, retry=False)
        if deleted == 0:
            raise _not_found()

    async def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return await list_audit(self, since, entity_id, limit, before)
