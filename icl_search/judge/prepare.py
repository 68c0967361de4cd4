"""The embedded default judge, prepared once like the base model: trained from the reference
data (AlpacaEval + just-eval, the dev queries of a fixed split) with the shipped `DEFAULT_RECIPE`,
cached under `$ICL_SEARCH_HOME/judges/reward-<key>/`.

The key is a sha256 over the training files' sha256s, the recipe and `CODE_VERSION`, so new
data, another recipe or a change to the trainer give a new folder (and, through the manifest's
hash in the judge id, new judge-cache keys: a study cache never mixes two judges). Training
runs in a `.partial-PID` sibling renamed into place under a file lock; the `.complete` marker
lists every file with its size and the manifest's sha256, and a folder whose files do not
match it (interrupted copy, truncated weights, edited manifest) is rebuilt, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from icl_search.io import atomic_folder
from icl_search.judge.alpaca import (
    ALPACA_FILES,
    JUST_EVAL_FILES,
    DataError,
    data_dir,
    load_alpaca,
    load_safety,
    require_files,
    split_ids,
)
from icl_search.judge.reward import Recipe

#: Bumped whenever the trainer or the input encoding changes what a recipe produces.
CODE_VERSION = 1
#: Held-out share of the queries (AlpacaEval and just-eval safety alike) and the split's seed.
TEST_FRACTION, SPLIT_SEED = 0.25, 0
#: The shipped recipe, chosen by bench/judge_recipe.py's quality-against-time curve.
DEFAULT_RECIPE = Recipe()
MANIFEST = "reward.json"
MARKER = ".complete"


def judges_dir() -> Path:
    from icl_search.paths import home

    return home() / "judges"


def training_files(root: Path) -> list[Path]:
    """Every file the default judge is trained from (hashed into its key)."""
    require_files(root, ALPACA_FILES + JUST_EVAL_FILES)
    files = [root / "alpaca-eval" / "instructions.dev.jsonl",
             *sorted((root / "alpaca-eval" / "annotations").glob("*.jsonl")),
             root / "just-eval" / "instructions.dev.jsonl",
             root / "just-eval" / "judgements" / "reference.dev.jsonl",
             *sorted((root / "just-eval" / "outputs").glob("*.jsonl"))]
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_manifest(root: Path) -> list[dict[str, str]]:
    return [{"file": str(f.relative_to(root)), "sha256": _sha256(f)}
            for f in training_files(root)]


def judge_key(data: list[dict[str, str]], recipe: Recipe) -> str:
    blob = json.dumps({"data": data, "recipe": recipe.to_dict(), "code": CODE_VERSION,
                       "split": [TEST_FRACTION, SPLIT_SEED]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_groups(root: Path | None = None):
    """(train groups, held-out AlpacaEval groups, held-out safety groups): the split every
    figure of the default judge is computed on."""
    alpaca, safety = load_alpaca(root), load_safety(root)
    tr_a, te_a = split_ids([g.id for g in alpaca], TEST_FRACTION, SPLIT_SEED)
    tr_s, te_s = split_ids([g.id for g in safety], TEST_FRACTION, SPLIT_SEED)
    train = [g for g in alpaca if g.id in tr_a] + [g for g in safety if g.id in tr_s]
    return (train, [g for g in alpaca if g.id in te_a], [g for g in safety if g.id in te_s])


def _file_list(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != MARKER}


def is_complete(folder: Path, manifest: str = MANIFEST) -> bool:
    """True only when the marker exists and every file it lists is there, at its size, and
    the manifest is the one trained (its sha256 matches)."""
    marker = folder / MARKER
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        files = meta["files"]
        if _file_list(folder) != files:
            return False
        return _sha256(folder / manifest) == meta["manifest_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare_default(data: str | os.PathLike | None = None, *, recipe: Recipe | None = None,
                    force: bool = False, progress: bool = True, threads: int | None = None,
                    say=print) -> Path:
    """The default judge's folder, trained now if it is not prepared yet (or is damaged)."""
    from filelock import FileLock

    root = data_dir(data)
    recipe = recipe or DEFAULT_RECIPE
    files = data_manifest(root)
    key = judge_key(files, recipe)
    target = judges_dir() / f"reward-{key}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and is_complete(target):
            return target
        if target.exists():
            say(f"{target}: incomplete or damaged judge folder; training it again")
        what = "the default judge" if recipe == DEFAULT_RECIPE else "a reward judge " + \
            ", ".join(f"{k}={v}" for k, v in recipe.to_dict().items()
                      if v != DEFAULT_RECIPE.to_dict()[k])
        say(f"preparing {what} from {root} (once; cached in {target}) ...")
        # Under the lock no one else writes this judge: any partial folder is a killed run's.
        with atomic_folder(target) as tmp:
            _train_into(tmp, root, files, key, recipe, progress, threads, say)
        say(f"prepared {what} -> {target}")
    return target


def _train_into(tmp: Path, root: Path, files, key: str, recipe: Recipe, progress: bool,
                threads: int | None, say) -> None:
    import torch

    from icl_search.judge.reward import train_reward

    train, held_a, held_s = split_groups(root)
    say(f"training on {len(train)} dev queries ({len(held_a)} AlpacaEval and {len(held_s)} "
        "safety queries held out for the figures)")
    t0 = time.time()
    model, tok, stats = train_reward(train, recipe, progress=progress, threads=threads)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    manifest: dict[str, Any] = {
        "kind": "reward", "key": key, "code_version": CODE_VERSION, "recipe": recipe.to_dict(),
        "data_root": str(root.resolve()), "data": files,
        "split": {"test_fraction": TEST_FRACTION, "seed": SPLIT_SEED,
                  "held_out_alpaca_ids": sorted(g.id for g in held_a),
                  "held_out_safety_ids": sorted(g.id for g in held_s)},
        "heads": ["quality", "safety"], "scale": [1, 5], "stats": stats,
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds")}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    marker = {"files": _file_list(tmp), "manifest_sha256": _sha256(tmp / MANIFEST)}
    (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")


def load_reward_manifest(folder: Path) -> tuple[dict[str, Any], str]:
    """(manifest, its sha256) of a prepared reward judge; DataError when it is unusable."""
    if not is_complete(folder):
        raise DataError(f"{folder}: not a complete reward judge (no {MARKER} marker, or files "
                        "that do not match it); prepare it with `icl-search judge prepare`")
    blob = (folder / MANIFEST).read_bytes()
    return json.loads(blob), hashlib.sha256(blob).hexdigest()


# -- the anchored default ---------------------------------------------------------------------
#: Bumped whenever the anchored judge's features or fit change what a recipe produces.
ANCHORED_CODE_VERSION = 1
ANCHORED_MANIFEST = "anchored.json"


def anchored_key(data: list[dict[str, str]], recipe, reward: Recipe) -> str:
    blob = json.dumps({"data": data, "recipe": recipe.to_dict(), "reward": reward.to_dict(),
                       "code": [CODE_VERSION, ANCHORED_CODE_VERSION],
                       "split": [TEST_FRACTION, SPLIT_SEED]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inner_split(train, recipe):
    """(reward-training groups, AlpacaEval groups the weights are fitted on): the training
    queries split again by `recipe.dev_fraction` / `dev_seed`, so the weights are fitted on
    reward scores of queries the reward heads never saw. Safety groups all train the heads."""
    alpaca = [g for g in train if g.kind == "alpaca"]
    tr, dev = split_ids([g.id for g in alpaca], recipe.dev_fraction, recipe.dev_seed)
    return ([g for g in alpaca if g.id in tr] + [g for g in train if g.kind != "alpaca"],
            [g for g in alpaca if g.id in dev])


def prepare_anchored(data: str | os.PathLike | None = None, *, recipe=None,
                     reward: Recipe | None = None, force: bool = False, progress: bool = True,
                     threads: int | None = None, say=print) -> Path:
    """The anchored default judge's folder, prepared now if it is not yet (or is damaged):
    reward heads trained on the inner-train queries, weights fitted on the inner-dev ones."""
    from filelock import FileLock

    from icl_search.judge.anchored import AnchoredRecipe

    root = data_dir(data)
    recipe = recipe or AnchoredRecipe()
    reward = reward or DEFAULT_RECIPE
    files = data_manifest(root)
    key = anchored_key(files, recipe, reward)
    target = judges_dir() / f"anchored-{key}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and is_complete(target, ANCHORED_MANIFEST):
            return target
        if target.exists():
            say(f"{target}: incomplete or damaged judge folder; preparing it again")
        say(f"preparing the default judge (reference-anchored) from {root} (once; cached in "
            f"{target}) ...")
        with atomic_folder(target) as tmp:
            _anchor_into(tmp, root, files, key, recipe, reward, progress, threads, say)
        say(f"prepared the default judge -> {target}")
    return target


def _anchor_into(tmp: Path, root: Path, files, key: str, recipe, reward: Recipe,
                 progress: bool, threads: int | None, say) -> None:
    from dataclasses import replace

    import numpy as np
    import torch

    from icl_search.index.embedder import Embedder
    from icl_search.judge.anchored import fit_both, group_features, reward_items
    from icl_search.judge.reward import predict, train_reward

    train, held_a, held_s = split_groups(root)
    heads_on, fit_on = inner_split(train, recipe)
    say(f"training {len(recipe.seeds)} reward head(s) on {len(heads_on)} queries, fitting the "
        f"weights on {len(fit_on)} others ({len(held_a)} AlpacaEval and {len(held_s)} safety "
        "queries held out for the figures)")
    t0, stats, raws = time.time(), [], []
    for seed in recipe.seeds:
        head = replace(reward, seed=seed)
        model, tok, st = train_reward(heads_on, head, progress=progress, threads=threads)
        model.save_pretrained(str(tmp / f"seed-{seed}"))
        tok.save_pretrained(str(tmp / f"seed-{seed}"))
        raws.append(predict(model, tok, head, reward_items(fit_on), progress=progress)[:, 0])
        stats.append(st)
    emb = Embedder(threads=threads)
    feats = group_features(fit_on, np.mean(raws, axis=0), emb, recipe.features)
    weights = fit_both(fit_on, feats, recipe)
    manifest: dict[str, Any] = {
        "kind": "anchored", "key": key, "code_version": [CODE_VERSION, ANCHORED_CODE_VERSION],
        "recipe": recipe.to_dict(), "reward_recipe": reward.to_dict(), "embedder": emb.id,
        "weights": {k: w.to_dict() for k, w in weights.items()},
        "data_root": str(root.resolve()), "data": files,
        "split": {"test_fraction": TEST_FRACTION, "seed": SPLIT_SEED,
                  "held_out_alpaca_ids": sorted(g.id for g in held_a),
                  "held_out_safety_ids": sorted(g.id for g in held_s),
                  "fit_alpaca_ids": sorted(g.id for g in fit_on)},
        "stats": {"heads": stats, "fit_queries": len(fit_on)},
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds")}
    (tmp / ANCHORED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    marker = {"files": _file_list(tmp), "manifest_sha256": _sha256(tmp / ANCHORED_MANIFEST)}
    (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
