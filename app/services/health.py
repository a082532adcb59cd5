"""Is the database reachable and migrated?"""

from __future__ import annotations

from alembic.script import ScriptDirectory
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
    if current != head:
        return schema_mismatch(current, head, known=_knows(scripts, current))
    return None


def schema_mismatch(current: str | None, head: str, *, known: bool) -> str:
    """What to do when the database's migration is not the code's."""
    if current is not None and not known:
        return (
            f"database is at migration {current}, newer than this code knows (it ends at "
            f"{head}): run the RouteLedger that migrated it"
        )
    return f"database is at migration {current}, the code needs {head}: run `routeledger migrate`"


def _knows(scripts: ScriptDirectory, revision: str | None) -> bool:
    try:
        return revision is None or scripts.get_revision(revision) is not None
    except Exception:  # alembic's own error for a revision it has no script of
        return False
