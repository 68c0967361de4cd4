"""The reference-anchored judge (`anchored:DIR`; the embedded `default`): a Bradley-Terry
combination of a learned reward score and the answer's similarity to the row's reference answer.

Why: AlpacaEval's annotator compared each output with one reference answer. On instructions a
learned reward judge never saw it was no better than "prefer the longer answer", while
cosine(answer, reference) held and is out of reach of instruction-independent text (NullModel
falls to last). The two fail differently, so a combination holds better than either.

Features of an item (each standardised with the mean and sd of the fitting data):
  reward   the quality head of `icl_search.judge.reward`, averaged over the recipe's seeds
  refsim   cosine(answer, reference), the project's embedder (packaged MiniLM)
  qsim     cosine(answer, query): relevance, which instruction-independent text lacks
The shipped recipe sums the z-scores of reward and refsim with equal weights; `fit="bt"` fits
the weights instead, by a logistic regression on within-query pair differences (Bradley-Terry)
of GPT-4-turbo's preferences with log length as a covariate dropped at scoring time. On an
inner dev split of the training queries (bench/judge_anchored.py, 5-fold CV) the fits did not
beat the equal weights and let NullModel climb for some seeds, so the simpler sum ships. The
standardisation (and any fit) uses reward scores of training queries the reward head never
saw. Two weight sets are kept: one over every feature, one over the features that need no
reference; a row without a reference is scored by the second (`detail["reference"] = False`;
`JudgeResult.reference_free` counts them).
Safety rows (no reference in the data) are scored by the reward's safety head, as before.
Scores are `1 + 4 * sigmoid(s)`: the judge orders answers to one query; levels carry no promise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from icl_search.judge.alpaca import NULL_MODEL, Group

FEATURES = ("reward", "refsim", "qsim")
NEEDS_REFERENCE = ("refsim",)


@dataclass(frozen=True)
class AnchoredRecipe:
    """Everything that decides an anchored judge besides the reward recipe (part of its key)."""

    features: tuple[str, ...] = ("reward", "refsim")
    seeds: tuple[int, ...] = (0,)  # reward heads trained with these seeds, scores averaged
    # "zsum": equal weights on the z-scores (the shipped choice: on inner-dev it matched the
    # Bradley-Terry fits and kept NullModel last for every seed, bench/judge_anchored.py);
    # "bt": weights fitted on the pairs
    fit: str = "zsum"
    length_covariate: bool = True
    pair_margin: float = 0.1  # preference units; pairs closer than this are not fitted on
    l2: float = 1.0  # inverse regularisation strength of the logistic fit (sklearn's C)
    dev_fraction: float = 0.25  # of the training queries: the weights' fitting set
    dev_seed: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"], d["seeds"] = list(self.features), list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AnchoredRecipe:
        return cls(**{**d, "features": tuple(d["features"]), "seeds": tuple(d["seeds"])})


def words_loglen(texts: Sequence[str]) -> np.ndarray:
    from icl_search.judge.result import count_words

    return np.array([math.log1p(count_words(t)) for t in texts])


def raw_features(names: Sequence[str], *, rewards: np.ndarray | None, embedder,
                 queries: Sequence[str], answers: Sequence[str],
                 references: Sequence[str | None], progress: bool = False) -> np.ndarray:
    """Unstandardised features (n, len(names)); NaN where a feature needs a missing reference."""
    from icl_search.judge.refsim import reference_cosines

    n = len(answers)
    out = np.full((n, len(names)), np.nan)
    have = [i for i, r in enumerate(references) if r is not None]
    for k, name in enumerate(names):
        if name == "reward":
            out[:, k] = rewards
        elif name == "refsim" and have:
            out[have, k] = reference_cosines(embedder, [answers[i] for i in have],
                                             [references[i] for i in have], progress=progress)
        elif name == "qsim":
            out[:, k] = reference_cosines(embedder, answers, queries, progress=progress)
    return out


@dataclass
class Weights:
    """A fitted combination: s = sum(w * (x - mean) / sd) over `features`."""

    features: list[str]
    mean: list[float]
    sd: list[float]
    w: list[float]
    length_beta: float = 0.0  # fitted, never applied

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.mean)) / np.asarray(self.sd)
        return z @ np.asarray(self.w)

    def to_dict(self) -> dict:
        return asdict(self)


def pair_design(groups: Sequence[Group], x: dict[str, np.ndarray], margin: float):
    """Within-query pairs of `groups` (NullModel left out) as (feature differences, length
    differences, preference differences)."""
    dx, dl, dp = [], [], []
    for g in groups:
        idx = [i for i, a in enumerate(g.answers) if a.system != NULL_MODEL]
        ll = words_loglen([a.text for a in g.answers])
        for a_pos, i in enumerate(idx):
            for j in idx[a_pos + 1:]:
                d = g.answers[i].preference - g.answers[j].preference
                if abs(d) >= margin and d != 0:
                    dx.append(x[g.id][i] - x[g.id][j])
                    dl.append(ll[i] - ll[j])
                    dp.append(d)
    return np.array(dx), np.array(dl), np.array(dp)


def fit_weights(groups: Sequence[Group], x: dict[str, np.ndarray], names: Sequence[str],
                recipe: AnchoredRecipe) -> Weights:
    """Standardise on every answer of `groups`, then fit (Bradley-Terry) or set (z-sum) the
    weights of `names`, columns of `x[gid]`."""
    stack = np.concatenate([x[g.id] for g in groups])
    mean, sd = stack.mean(axis=0), stack.std(axis=0)
    sd[sd == 0] = 1.0
    if recipe.fit == "zsum":
        return Weights(list(names), mean.tolist(), sd.tolist(), [1.0 / len(names)] * len(names))
    from sklearn.linear_model import LogisticRegression

    z = {gid: (v - mean) / sd for gid, v in x.items()}
    dx, dl, dp = pair_design(groups, z, recipe.pair_margin)
    if len(dp) == 0:
        raise ValueError("no within-query pair to fit the anchored judge's weights on")
    design = np.column_stack([dx, dl]) if recipe.length_covariate else dx
    # Both orientations of every pair: the fit has no intercept and no side to favour.
    features = np.vstack([design, -design])
    labels = np.concatenate([np.ones(len(dp)), np.zeros(len(dp))])
    weight = np.concatenate([np.abs(dp), np.abs(dp)])
    model = LogisticRegression(C=recipe.l2, fit_intercept=False, max_iter=1000)
    model.fit(features, labels, sample_weight=weight / weight.mean())
    coef = model.coef_[0]
    w = coef[:len(names)]
    return Weights(list(names), mean.tolist(), sd.tolist(), w.tolist(),
                   float(coef[-1]) if recipe.length_covariate else 0.0)


def to_scale(s: np.ndarray) -> np.ndarray:
    return 1.0 + 4.0 / (1.0 + np.exp(-np.asarray(s, dtype=np.float64)))


def reward_items(groups: Sequence[Group]) -> list[tuple[str, str]]:
    return [(g.query, a.text) for g in groups for a in g.answers]


def group_features(groups: Sequence[Group], rewards: np.ndarray, embedder,
                   names: Sequence[str]) -> dict[str, np.ndarray]:
    """{group id: raw features (answers, names)} for AlpacaEval groups (reference included)."""
    answers = [a.text for g in groups for a in g.answers]
    x = raw_features(names, rewards=rewards, embedder=embedder,
                     queries=[g.query for g in groups for _ in g.answers], answers=answers,
                     references=[g.reference for g in groups for _ in g.answers])
    out, k = {}, 0
    for g in groups:
        out[g.id] = x[k:k + len(g.answers)]
        k += len(g.answers)
    return out


def fit_both(groups: Sequence[Group], feats: dict[str, np.ndarray],
             recipe: AnchoredRecipe) -> dict[str, Weights]:
    """The weights over every feature ("anchored") and over those needing no reference
    ("reference_free", the fallback for rows without one)."""
    free = [f for f in recipe.features if f not in NEEDS_REFERENCE]
    cols = [recipe.features.index(f) for f in free]
    out = {"anchored": fit_weights(groups, feats, recipe.features, recipe)}
    out["reference_free"] = fit_weights(groups, {g: v[:, cols] for g, v in feats.items()},
                                        free, recipe)
    return out
