"""Old import paths, kept for a while: the one list of them, each with the icl-search version
that removes it (as Optuna's `_deprecated` and lm-evaluation-harness's legacy names).

An old home's module `__getattr__` calls `moved(__name__, name)`: the name is looked up in
its new home by name at run time (never by a static import, which would draw an arrow back up
the layers) and a `DeprecationWarning` names the new path. `tests/test_layers.py` fails once
the package's version reaches a removal version, so the entry and its `__getattr__` go then.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# (old module, name): (new module, the version that removes the old path)
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("icl_search.study", "trials_frame"): ("icl_search.report", "0.2.0"),
    ("icl_search.bundle", "redact_url"): ("icl_search.redact", "0.2.0"),
}


def moved(module: str, name: str) -> Any:
    """`name` from its new home, with a warning naming it; AttributeError if it never moved."""
    try:
        new, removal = MOVED[(module, name)]
    except KeyError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
    warnings.warn(f"{module}.{name} moved to {new}.{name}; the old path is removed in "
                  f"icl-search {removal}", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(new), name)
