"""Admin roles and what each may do: the Go service's RBAC table, unchanged.

`has_permission(role, permission)` answers as the Go service's `auth.HasPermission`
does (internal/auth/rbac.go), so an operator has the same rights through either
side; an unknown role or permission has none.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PERMISSIONS", "ROLES", "has_permission"]

ROLES: Final = ("admin", "editor", "viewer")
PERMISSIONS: Final = (
    "tenant:read",
    "tenant:write",
    "tenant:delete",
    "usage:read",
    "admin:manage",
)

_ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset(PERMISSIONS),
    "editor": frozenset({"tenant:read", "tenant:write", "usage:read"}),
    "viewer": frozenset({"tenant:read", "usage:read"}),
}


def has_permission(role: str, permission: str) -> bool:
    """Whether `role` grants `permission` (e.g. ``has_permission("editor",
    "tenant:delete")`` is False). Unknown roles and permissions: False."""
    granted = _ROLE_PERMISSIONS.get(role) if isinstance(role, str) else None
    return granted is not None and permission in granted
