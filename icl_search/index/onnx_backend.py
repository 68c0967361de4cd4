"""The embedder's transformer run by onnxruntime: the same vectors as sentence-transformers'
PyTorch forward pass, at less than half its CPU time per query.

Why not sentence-transformers' own `backend="onnx"`: it goes through `optimum`, whose releases
pin a transformers older than the one vLLM needs, so the two cannot share an environment. What
this module does instead is small and checked:

- the model's transformer (its first module) is exported once with `torch.onnx.export` to
  `home()/onnx/<digest of the embedder id>/model.onnx` (written atomically; every process
  and every later run reuses it);
- texts are tokenised by the sentence-transformers model itself (`preprocess`: its truncation,
  casing and special tokens), the ONNX graph gives the token states, and the model's own
  pooling (mean or CLS) and L2 normalisation are applied to them;
- right after an export, a fixed probe set is embedded both ways: unless every probe vector
  agrees with PyTorch's to cosine >= `AGREEMENT` the export is refused (`OnnxUnavailable`) and
  the caller stays on PyTorch.

Only models made of a Transformer, a Pooling (mean or CLS) and optionally a Normalize module
are run this way (all-MiniLM-L6-v2, the default, is one); any other structure stays on PyTorch.

Measured on this project's 2-core hosts (all-MiniLM-L6-v2, one thread, just-eval
instructions, CPU ms per call, median): one query 9.6 (PyTorch) against 3.8 (onnxruntime);
4 queries 33.3 against 14.7; 8 queries 74.5 against 33.4; every vector within cosine 1e-6.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.errors import first_line
from icl_search.io import atomic_write, write_json
from icl_search.paths import home

#: Every probe vector must agree with PyTorch's to at least this cosine for an export to be used.
AGREEMENT = 0.9999
#: Texts embedded both ways after an export (short and long, cased, punctuated, non-ASCII).
PROBES = (
    "How do I bake sourdough bread?",
    "Summarize the plot of Hamlet in three sentences, then explain why the ending matters.",
    "Was ist der Unterschied zwischen einem Virus und einem Bakterium?",
    "def f(x): return x ** 2  # what does this compute for x = 3?",
    "ok",
    "Write a limerick about a cat who learned to code in Rust, and make the last line rhyme "
    "with the first. " * 6,
)
_FORMAT = 1  # bump when the exported graph's inputs or outputs change


class OnnxUnavailable(Exception):
    """This model cannot be run by onnxruntime here (why is the message); use PyTorch."""


def _structure(model: Any) -> str:
    """The pooling mode of a supported model, else `OnnxUnavailable`. (Vectors are always
    L2-normalised, as `Embedder` asks sentence-transformers for them.)"""
    names = [type(m).__name__ for m in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxUnavailable(f"modules {names}: only Transformer + Pooling (+ Normalize) "
                              "models are exported")
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)
    if mode not in ("mean", "cls"):
        raise OnnxUnavailable(f"pooling mode {mode!r}: only mean and CLS pooling are exported")
    if not getattr(pooling, "include_prompt", True):
        raise OnnxUnavailable("pooling without the prompt tokens is not exported")
    return mode


class OnnxEncoder:
    """`encode(texts)` -> L2-normalised float32 vectors, the model's transformer in
    onnxruntime. Built by `OnnxEncoder.load(st_model, embedder_id)`; raises `OnnxUnavailable`."""

    def __init__(self, st_model: Any, path: Path, inputs: list[str], pooling: str):
        self._st, self.path, self._inputs, self._pooling = st_model, path, inputs, pooling
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- building ------------------------------------------------------------------------
    @staticmethod
    def folder(embedder_id: str) -> Path:
        digest = hashlib.sha256(f"{embedder_id}\x00{_FORMAT}".encode()).hexdigest()[:16]
        return home() / "onnx" / digest

    @classmethod
    def load(cls, st_model: Any, embedder_id: str) -> OnnxEncoder:
        try:
            import onnxruntime  # noqa: F401 - only checking it is installed
        except ImportError as exc:
            raise OnnxUnavailable("onnxruntime is not installed") from exc
        pooling = _structure(st_model)
        folder = cls.folder(embedder_id)
        path, manifest = folder / "model.onnx", folder / "manifest.json"
        inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in st_model.preprocess(["probe"])]
        enc = cls(st_model, path, inputs, pooling)
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):  # missing or unreadable: export again
            meta = {}
        if meta.get("id") == embedder_id and meta.get("inputs") == inputs:
            if not meta.get("agrees", False):
                raise OnnxUnavailable(f"its export disagreed with PyTorch (cosine "
                                      f"{meta.get('min_cosine')}; delete {folder} to retry)")
            # A hub model keeps its name when its weights change: two probes each time the
            # export is loaded (~20 ms) catch an export of other weights (or a damaged
            # file), which is then redone.
            if enc._still_agrees():
                return enc
            enc._sessions.clear()
        try:
            enc._export(folder)
            worst = enc._agreement()
        except OSError as exc:  # a read-only or full home: PyTorch still works
            raise OnnxUnavailable(f"its export could not be written to {folder} ({exc})"
                                  ) from exc
        except Exception as exc:  # an op the exporter or onnxruntime lacks
            raise OnnxUnavailable(f"its export failed ({type(exc).__name__}: "
                                  f"{first_line(exc, '')[:200]})") from exc
        write_json(manifest, {"id": embedder_id, "format": _FORMAT, "inputs": inputs,
                              "pooling": pooling, "min_cosine": worst,
                              "agrees": worst >= AGREEMENT})
        if worst < AGREEMENT:
            raise OnnxUnavailable(f"its export disagreed with PyTorch (cosine {worst:.6f}; "
                                  f"delete {folder} to retry)")
        return enc

    def _export(self, folder: Path) -> None:
        import torch

        transformer = self._st[0].auto_model
        names = self._inputs

        class _States(torch.nn.Module):  # the token states, from the inputs by name
            def __init__(self, inner: torch.nn.Module):
                super().__init__()
                self.inner = inner

            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                return self.inner(**dict(zip(names, args))).last_hidden_state

        sample = self._st.preprocess(list(PROBES[:2]))
        axes = {k: {0: "batch", 1: "tokens"} for k in names}
        axes["states"] = {0: "batch", 1: "tokens"}
        graph = io.BytesIO()
        # The tracer's warnings (shape-dependent branches it folds) are about the trace, not
        # the user's work; the probe check below is what says the graph is right.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_States(transformer).eval(), tuple(sample[k] for k in names), graph,
                              input_names=names, output_names=["states"], dynamic_axes=axes,
                              opset_version=17, dynamo=False)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "wb", encoding=None) as fh:
            fh.write(graph.getvalue())

    def _still_agrees(self) -> bool:
        """Two probes against PyTorch; False also for a graph onnxruntime cannot load."""
        try:
            return self._agreement(PROBES[:2]) >= AGREEMENT
        except Exception:  # noqa: BLE001 - an unreadable graph is exported again
            return False

    def _agreement(self, probes: tuple[str, ...] = PROBES) -> float:
        """The lowest cosine between this graph's vectors and PyTorch's for `probes`."""
        ours = self.encode(list(probes), batch_size=4, threads=1)
        theirs = self._st.encode(list(probes), convert_to_numpy=True, normalize_embeddings=True)
        return float(np.min(np.sum(ours * theirs, axis=1)))

    # -- running ---------------------------------------------------------------------------
    def _session(self, threads: int) -> Any:
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                # Idle workers sleep rather than spin: on a shared CPU host (vLLM's engine on
                # the same cores) spinning threads take cores from the work that needs them.
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._sessions[threads] = ort.InferenceSession(
                    str(self.path), opts, providers=["CPUExecutionProvider"])
            return self._sessions[threads]

    def encode(self, texts: list[str], *, batch_size: int, threads: int,
               show_progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        session = self._session(max(1, threads))
        out = np.empty((len(texts), 0), dtype=np.float32)
        # Longest first, in batches, as sentence-transformers does: less padding per batch.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunks: list[np.ndarray] = []
        for i in tqdm(range(0, len(texts), batch_size), desc="batches",
                      disable=not show_progress):
            batch = [texts[j] for j in order[i:i + batch_size]]
            features = self._st.preprocess(batch)
            feeds = {k: features[k].numpy().astype(np.int64) for k in self._inputs}
            (states,) = session.run(["states"], feeds)
            if self._pooling == "cls":
                vecs = states[:, 0]
            else:
                mask = feeds["attention_mask"][..., None].astype(np.float32)
                vecs = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            chunks.append(vecs.astype(np.float32))
        if chunks:
            out = np.concatenate(chunks)
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
            out = out[np.argsort(order, kind="stable")]
        return np.ascontiguousarray(out, dtype=np.float32)


__all__ = ["AGREEMENT", "OnnxEncoder", "OnnxUnavailable"]
