"""The prompt bundle: one JSON file that carries a study's winning context to production.

A bundle holds everything needed to rebuild the exact prompt a trial was scored on: the
base model, the template, the system preamble, the examples (inline for a fixed set; for
per-query retrieval, the selection settings plus the pool and index they need, with the
pool's fingerprint so a changed pool is refused), the decoding parameters, the scores it
earned and where it came from. Loading a bundle needs no GPU and no model; rendering a
fixed bundle needs nothing else at all.

File layout (``schema_version`` 1)::

    {"schema_version": 1,
     "model": "gemma-3-270m",                      # name or path, as given to the study
     "template": {"query_marker": ..., "answer_marker": ..., "fence": ..., "stop": [...]},
     "system": "...preamble text...",
     "mode": "fixed" | "retrieval",
     "lock_context": false,                        # true: served, clients cannot replace it
     "examples": [{"id", "query", "answer", "category"}, ...],      # fixed mode
     "retrieval": {"selection": {SelectionConfig}, "anchors": [...],  # retrieval mode
                   "embedder": "<embedder id>", "embedder_path": null | "<dir, relative>",
                   "pool": "<pool file, relative to the bundle>", "pool_fingerprint": "...",
                   "index": "<index dir, relative to the bundle>"},
     "sampling": {SamplingParams fields},
     "scores": {"overall", "aspects", "n_queries", "judge", "coverage", ...},
     "provenance": {"study", "trial", "storage" (credentials stripped), "config_hash",
                    "versions": {package: version}, "created", ...}}

A file whose ``schema_version`` is newer than `SCHEMA_VERSION` is refused; unknown top-level
fields are refused too, so a hand-edited typo does not silently change a prompt.
"""


from icl_search.bundle.bundle import Bundle
from icl_search.bundle.parts import (
    NO_URIAL_FILE,
    SCHEMA_VERSION,
    SYSTEM_MODES,
    BundleError,
    BundleExample,
    Confirmation,
    ConfirmGain,
    ContextWindowError,
    Provenance,
    Rendered,
    Retrieval,
    Scores,
    SystemMode,
    package_versions,
)
from icl_search.bundle.portable import copy_beside

__all__ = [
    "NO_URIAL_FILE",
    "SCHEMA_VERSION",
    "SYSTEM_MODES",
    "Bundle",
    "BundleError",
    "BundleExample",
    "ConfirmGain",
    "Confirmation",
    "ContextWindowError",
    "Provenance",
    "Rendered",
    "Retrieval",
    "Scores",
    "SystemMode",
    "copy_beside",
    "package_versions",
]


def __getattr__(name: str):
    # old paths (`icl_search.bundle.redact_url`): the one list is icl_search._deprecated
    from icl_search._deprecated import moved

    return moved(__name__, name)
