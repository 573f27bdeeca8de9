"""Create or migrate the schema with Alembic (what `ticketgate init` runs), and tell whether a
database has been initialised (what every other command checks first)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from store.db import READ_ONLY

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolates "%": escape it (URLs may carry %-encoded options)
    cfg.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision; a no-op when it is there already."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sqlite_file_missing(url: str) -> bool:
    """True when ``url`` names a SQLite database file that does not exist. Connecting to it
    would create an empty one, so callers other than `init` check this first."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return False
    if u.database.startswith("file:"):  # a SQLite URI: its own rules; connect to find out
        return False
    return not Path(u.database).exists()


@dataclass(frozen=True)
class SchemaState:
    """The database's Alembic revision (None: no schema at all) and the code's newest one."""

    current: str | None
    head: str | None

    @property
    def ready(self) -> bool:
        return self.current is not None and self.current == self.head


def schema_state(engine: Engine) -> SchemaState:
    """Read the revision in the `alembic_version` table (in a read-only transaction: it does
    not wait for a running writer on SQLite) and compare it with the newest migration."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True})
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(current=current, head=head)
