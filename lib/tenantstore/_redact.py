"""What a log line may say about a connection string: where it points, no secret.

`redact_conninfo` keeps the host, port, database and user of a URL or a
``key=value`` conninfo and drops everything else (a password, an sslpassword, a
passfile's path, options): logs name the server, never a credential.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["redact_conninfo"]

_SHOWN: Final = ("host", "hostaddr", "port", "dbname", "user")


def redact_conninfo(conninfo: str) -> str:
    """`conninfo` as ``host=... port=... dbname=... user=...``, nothing more."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(an unreadable conninfo)"
    return make_conninfo("", **{k: params[k] for k in _SHOWN if params.get(k)})
