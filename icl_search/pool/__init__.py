"""The example pool, in three rooms:

- `schema`: the `Example` row, `PoolError` / `Problem`, and validation (`check`,
  `validate`) that names file, line and field;
- `store`: the `Pool` (unique ids, fingerprint, merge) loaded from and saved to JSONL /
  Parquet / CSV, with its `<stem>.system.txt` preamble;
- `urial`: the URIAL prompt-file format, parsed and rendered byte for byte;
- `importers`: Alpaca JSON, ShareGPT / OpenAI messages, just-eval outputs and URIAL files
  into a `Pool`.

Everything is importable from `icl_search.pool`.
"""

from icl_search.pool.importers import import_file
from icl_search.pool.schema import (
    DEFAULT_CATEGORY,
    DEFAULT_SOURCE,
    IMPORT_FORMATS,
    MAX_ANSWER_CHARS,
    MAX_QUERY_CHARS,
    MIN_ANSWER_CHARS,
    NEAR_MISS_CUTOFF,
    POOL_SUFFIXES,
    REQUIRED_FIELDS,
    SYSTEM_SUFFIX,
    Example,
    PoolError,
    PoolWarning,
    Problem,
    Validation,
    check,
    misspelled,
    normalise_query,
    validate,
)
from icl_search.pool.store import Pool, system_path, write_system
from icl_search.pool.urial import UrialDocument, parse_urial, read_urial, render_urial

__all__ = [
    "DEFAULT_CATEGORY", "DEFAULT_SOURCE", "IMPORT_FORMATS", "MAX_ANSWER_CHARS",
    "MAX_QUERY_CHARS", "MIN_ANSWER_CHARS", "NEAR_MISS_CUTOFF", "POOL_SUFFIXES",
    "REQUIRED_FIELDS", "SYSTEM_SUFFIX", "Example", "Pool", "PoolError", "PoolWarning",
    "Problem", "UrialDocument", "Validation", "check", "import_file", "misspelled",
    "normalise_query", "parse_urial", "read_urial", "render_urial", "system_path",
    "validate", "write_system",
]
