"""Is the database reachable and migrated?"""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from app.migrate import alembic_config


def database_status(conn: Connection) -> str | None:
    """None when ready; otherwise what is wrong."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        current = conn.execute(text("select version_num from alembic_version")).scalar()
    except Exception:
        return "database is not migrated: run `routeledger migrate`"
    if current != head:
        return (
            f"database is at migration {current}, the code needs {head}: run `routeledger migrate`"
        )
    return None
