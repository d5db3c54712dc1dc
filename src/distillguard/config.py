"""Where distillguard keeps its state, and the environment variables that move it.

``DISTILLGUARD_HOME``
    data directory (master secret, SQLite database); default
    ``$XDG_DATA_HOME/distillguard`` or ``~/.local/share/distillguard``
``DISTILLGUARD_MASTER_SECRET``
    the master secret itself (64 hex characters or more); when set, no secret file is read
    or written
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "MASTER_SECRET_ENV", "data_dir"]

HOME_ENV = "DISTILLGUARD_HOME"
MASTER_SECRET_ENV = "DISTILLGUARD_MASTER_SECRET"  # noqa: S105 - a variable name


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: `override`, else $DISTILLGUARD_HOME, else the XDG data directory."""
    if override is not None:
        return Path(override).expanduser()
    from_env = os.environ.get(HOME_ENV)
    if from_env:
        return Path(from_env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "distillguard"
