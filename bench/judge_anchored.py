"""Choosing the anchored judge's recipe on an inner dev split of the TRAINING queries only.

The default judge's split (`icl_search.judge.prepare`) holds 25% of the AlpacaEval queries out
for the reported figures; this script never reads them. It splits the training queries again
(`AnchoredRecipe.dev_fraction`, `dev_seed`: the split the shipped judge fits its weights on),
trains the reward heads on the inner-train part (one per seed), computes every feature on the
inner-dev part, and scores each candidate combination by 5-fold cross-validation over inner-dev
queries (weights fitted on four folds, figures on the fifth), so no candidate is scored on the
pairs it was fitted on. Length-matched agreement is counted both ways (words, characters).

    flock /tmp/icl-heavy.lock nice .venv/bin/python bench/judge_anchored.py
    ANCHORED_SEEDS=0,1 ...            # the reward seeds trained and compared (default 0,1,2)
Writes bench/results/judge_anchored.json; the trained heads and features are kept in
runs/judge-anchored/ so a rerun only re-scores the candidates.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from icl_search.io import write_json
from icl_search.judge.alpaca import data_dir, load_lc_winrate, split_ids
from icl_search.judge.anchored import FEATURES, AnchoredRecipe, fit_weights, raw_features
from icl_search.judge.metrics import preference_figures, safety_auc
from icl_search.judge.prepare import DEFAULT_RECIPE, split_groups

OUT = ROOT / "bench" / "results" / "judge_anchored.json"
WORK = ROOT / "runs" / "judge-anchored"
SEEDS = tuple(int(s) for s in os.environ.get("ANCHORED_SEEDS", "0,1,2").split(","))


def inner_split(recipe: AnchoredRecipe = AnchoredRecipe()):
    train, _, _ = split_groups(data_dir())
    alpaca = [g for g in train if g.kind == "alpaca"]
    safety = [g for g in train if g.kind == "safety"]
    tr, dev = split_ids([g.id for g in alpaca], recipe.dev_fraction, recipe.dev_seed)
    str_, sdev = split_ids([g.id for g in safety], recipe.dev_fraction, recipe.dev_seed)
    return ([g for g in alpaca if g.id in tr] + [g for g in safety if g.id in str_],
            [g for g in alpaca if g.id in dev], [g for g in safety if g.id in sdev])


def rewards_for(seed: int, inner_train, items) -> tuple[np.ndarray, float]:
    path = WORK / f"reward-seed{seed}.npy"
    if path.exists():
        meta = json.loads((WORK / f"reward-seed{seed}.json").read_text())
        return np.load(path), meta["train_seconds"]
    from icl_search.judge.reward import predict, train_reward

    recipe = replace(DEFAULT_RECIPE, seed=seed)
    model, tok, stats = train_reward(inner_train, recipe, threads=2, progress=True)
    raw = predict(model, tok, recipe, items, progress=True)
    WORK.mkdir(parents=True, exist_ok=True)
    np.save(path, raw)
    (WORK / f"reward-seed{seed}.json").write_text(json.dumps(stats))
    return raw, stats["train_seconds"]


def cv_scores(dev, feats: dict[str, np.ndarray], recipe: AnchoredRecipe, folds: int = 5):
    """Out-of-fold scores of every inner-dev answer under `recipe`."""
    cols = [FEATURES.index(f) for f in recipe.features]
    ids = sorted(g.id for g in dev)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    fold_of = {ids[i]: k % folds for k, i in enumerate(order)}
    out = {}
    for k in range(folds):
        fit = [g for g in dev if fold_of[g.id] != k]
        w = fit_weights(fit, {g.id: feats[g.id][:, cols] for g in fit}, recipe.features, recipe)
        for g in dev:
            if fold_of[g.id] == k:
                out[g.id] = w.score(feats[g.id][:, cols])
    return out


def main() -> None:
    t0 = time.time()
    inner_train, dev, sdev = inner_split()
    items = [(g.query, a.text) for g in dev + sdev for a in g.answers]
    print(f"inner-train {len(inner_train)} groups, inner-dev {len(dev)} AlpacaEval and "
          f"{len(sdev)} safety queries, {len(items)} items", flush=True)
    raws, train_s = {}, {}
    for seed in SEEDS:
        raws[seed], train_s[seed] = rewards_for(seed, inner_train, items)
    from icl_search.index.embedder import Embedder

    emb = Embedder(threads=2)
    n_a = sum(len(g.answers) for g in dev)
    answers = [a.text for g in dev for a in g.answers]
    queries = [g.query for g in dev for _ in g.answers]
    refs = [g.reference for g in dev for _ in g.answers]
    lc = load_lc_winrate()
    rows = []

    def record(name, scores, extra=None):
        f = preference_figures(dev, scores, lc_winrate=lc)
        row = {"name": name, "matched_words": round(f["agreement_matched"], 4),
               "matched_chars": round(f["agreement_matched_chars"], 4),
               "all": round(f["agreement_all"], 4),
               "rho": round(f["system_spearman"], 3), "null_rank": f["null_rank"],
               "systems": f["systems"], "pairs_words": f["matched_pairs"],
               "pairs_chars": f["matched_pairs_chars"], **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)

    per_group = {}
    singles = tuple((s,) for s in SEEDS)
    for seeds in (*singles, SEEDS):
        reward = np.mean([raws[s][:n_a, 0] for s in seeds], axis=0)
        x = raw_features(FEATURES, rewards=reward, embedder=emb, queries=queries,
                         answers=answers, references=refs)
        k, feats = 0, {}
        for g in dev:
            feats[g.id] = x[k:k + len(g.answers)]
            k += len(g.answers)
        per_group[seeds] = feats
        tag = "+".join(map(str, seeds))
        for j, name in enumerate(FEATURES):
            if name != "reward" and seeds != (0,):
                continue
            record(f"{name} alone (seeds {tag})" if name == "reward" else f"{name} alone",
                   {g: v[:, j] for g, v in feats.items()})
        sa = np.mean([raws[s][n_a:, 1] for s in seeds], axis=0)
        k, ss = 0, {}
        for g in sdev:
            ss[g.id] = sa[k:k + len(g.answers)]
            k += len(g.answers)
        print(f"safety AUC seeds {tag}: {safety_auc(sdev, ss):.4f}", flush=True)
    candidates = [
        AnchoredRecipe(fit="zsum"),
        AnchoredRecipe(),
        AnchoredRecipe(length_covariate=False),
        AnchoredRecipe(features=("reward", "refsim", "qsim")),
        AnchoredRecipe(features=("reward", "refsim", "qsim"), fit="zsum"),
        AnchoredRecipe(features=("reward", "qsim")),
        AnchoredRecipe(l2=0.01),
    ]
    for seeds in (*singles, SEEDS):
        for c in candidates:
            c = replace(c, seeds=seeds)
            record(f"{c.fit} {'+'.join(c.features)} len={c.length_covariate} l2={c.l2} "
                   f"seeds={'+'.join(map(str, seeds))}",
                   cv_scores(dev, per_group[seeds], c), {"recipe": c.to_dict()})
    write_json(OUT, {"inner_dev_queries": len(dev), "inner_dev_safety": len(sdev),
                     "inner_train_groups": len(inner_train), "train_seconds": train_s,
                     "rows": rows, "wall_seconds": round(time.time() - t0, 1),
                     "note": "5-fold CV over inner-dev queries of the training split; the "
                             "held-out split is not read"})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
