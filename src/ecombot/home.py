"""Where ecombot keeps what it builds once per machine: converted models, compiled kernels, the default database."""

from __future__ import annotations

import os
from pathlib import Path


def ecombot_home() -> Path:
    """$ECOMBOT_HOME, else ~/.cache/ecombot."""
    return Path(os.environ.get("ECOMBOT_HOME") or Path.home() / ".cache" / "ecombot").expanduser()


def default_db_url() -> str:
    """The database conversations and the knowledge base share unless --db names another: $ECOMBOT_DB (any
    SQLAlchemy URL), else SQLite in the home."""
    if os.environ.get("ECOMBOT_DB"):
        return os.environ["ECOMBOT_DB"]
    home = ecombot_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'ecombot.db'}"
