"""icl-search: find and serve the URIAL context that aligns a base LLM.

The public Python API: the few names a notebook needs, re-exported here. They are imported
lazily (PEP 562 `__getattr__`), so `import icl_search` stays fast and loads neither torch nor
vLLM until a name is used.

>>> import icl_search as ic
>>> cfg = ic.load_config("studies/demo.toml", **{"optuna.n_trials": 4})
>>> summary = ic.run_study(cfg, ic.build_evaluator(cfg))
>>> bundle = ic.Bundle.load("runs/demo/bundle.json")
>>> print(bundle.render("How do I sort a list in Python?"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from icl_search.version import __version__

# public name -> the module that owns it
_EXPORTS = {
    "load_config": "icl_search.study",
    "build_evaluator": "icl_search.study",
    "run_study": "icl_search.study",
    "Bundle": "icl_search.bundle",
    "Pool": "icl_search.pool",
    "Selector": "icl_search.selection",
    "make_judge": "icl_search.judge",
    "make_engine": "icl_search.engines",
    "IclSearchError": "icl_search.errors",
}

__all__ = [
    "Bundle",
    "IclSearchError",
    "Pool",
    "Selector",
    "__version__",
    "build_evaluator",
    "load_config",
    "make_engine",
    "make_judge",
    "run_study",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on use
    from icl_search.bundle import Bundle
    from icl_search.engines import make_engine
    from icl_search.errors import IclSearchError
    from icl_search.judge import make_judge
    from icl_search.pool import Pool
    from icl_search.selection import Selector
    from icl_search.study import build_evaluator, load_config, run_study


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icl_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
