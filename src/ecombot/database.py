"""Opening the database that conversations and knowledge bases share: one engine recipe, so SQLite gets the same
pragmas and a missing table is created the same way whichever part opens the file first."""

from __future__ import annotations

import re
import sqlite3
import time
from urllib.parse import unquote

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine

from ecombot.errors import EcombotError

SQLITE_BUSY_TIMEOUT_S = 30
URL_PASSWORD = re.compile(r"://[^/@:]*:([^/@]+)@")


def without_password(text: str, url: str) -> str:
    """`text` (a URL, or an error about the database at `url`) with the URL's password shown as ***."""
    match = URL_PASSWORD.search(url)
    if not match:
        return text
    for password in {match.group(1), unquote(match.group(1))}:
        text = text.replace(password, "***")
    return text


def open_engine(url: str, metadata: MetaData, what: str) -> Engine:
    """An engine on `url` with `metadata`'s tables created. Several processes may open a new database at the same
    moment (the ranks of a distributed run, a server and a CLI): create_all checks, then creates, so the slower one
    can meet "table already exists"; trying again skips the tables that now exist."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # bad URL or missing driver
        raise EcombotError(without_password(f"--db {url!r}: {exc}", url)) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    for tries_left in reversed(range(len(metadata.tables) + 1)):
        try:
            metadata.create_all(engine)
            break
        except Exception as exc:
            # Each race lost means one more table exists, so the tries are bounded by the table count. Any other
            # error (unreachable server, not a database, no permission) fails at once.
            if not (tries_left and _lost_a_create_race(exc)):
                raise EcombotError(without_password(f"cannot open {what} in {url}: {exc}", url)) from None
    return engine


def _lost_a_create_race(exc: Exception) -> bool:
    """SQLite says "table ... already exists"; PostgreSQL says "relation ... already exists", or, when both CREATEs
    reach its catalogue together, "duplicate key value violates unique constraint pg_type_typname_nsp_index"."""
    return "already exists" in str(exc) or "pg_type_typname_nsp_index" in str(exc)


def _sqlite_pragmas(connection, _record) -> None:
    """WAL: readers don't block the writer, and a killed process never leaves a half-written answer. The busy
    timeout lets a second process wait for the writer instead of failing at once."""
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor) -> None:
    """Switching a new file to WAL needs it alone, and SQLite answers "database is locked" at once, without its busy
    timeout, while another process is opening the same file (measured: 1 in ~50 rounds of 4 processes opening a new
    database together); so wait here as the busy timeout would."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
