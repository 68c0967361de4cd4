"""Where icl-search keeps its per-user state (prepared models, judges, caches): one `home()`."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The per-user working folder: `$ICL_SEARCH_HOME` (`~` expanded), else
    `~/.cache/icl-search`."""
    env = os.environ.get("ICL_SEARCH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "icl-search"
