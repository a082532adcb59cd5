"""Is the database reachable and migrated?"""

from __future__ import annotations

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, text

from app.migrate import alembic_config

NOT_MIGRATED = "database is not migrated: run `routeledger migrate`"


def database_status(conn: Connection) -> str | None:
    """None when ready; otherwise what is wrong."""
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    try:
        current = conn.execute(text("select version_num from alembic_version")).scalar()
    except Exception:
        return NOT_MIGRATED
    if current == head:
        return None
    try:
        scripts.get_revision(current)
    except CommandError:  # a revision this code has no script of: a newer RouteLedger's
        return (
            f"database is at migration {current}, newer than this code knows (it ends at "
            f"{head}): run the RouteLedger that migrated it"
        )
    return f"database is at migration {current}, the code needs {head}: run `routeledger migrate`"
