"""The contexts `compare` adds to a study's confirmation: the base model zero-shot (no preamble,
no examples), and with `--transfer` every other study's best context (its preamble, its example
selection over its pool, its searched decoding), answered by this study's model on this
study's confirm set and scored by this study's judges. They are stored beside the confirmation
(`icl_search.study.confirm.confirm_outside`) and never enter its verdict or export."""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from icl_search.compare.sources import Source
from icl_search.study import attrs
from icl_search.study.confirm import Candidate, spec_key
from icl_search.study.space import TrialSpec

ZERO_SHOT = "zero-shot"
TRANSFER = "transfer"


@dataclass
class Extra:
    """A context outside the plan: the candidate, and what it needs to be answered."""

    candidate: Candidate
    system: str
    pool_path: str | None = None  # the donor's pool (None: no examples)
    missing: str | None = None  # why it cannot be answered on this study
    donor: str | None = None  # which of the donor's candidates it is ("trial 3", "baseline")


def zero_shot() -> Extra:
    spec = TrialSpec(ZERO_SHOT, 0, "none", ())
    return Extra(Candidate(ZERO_SHOT, ZERO_SHOT, f"{ZERO_SHOT}-{spec_key(spec)}", None, spec,
                           None), "")


def transfer_label(donor: str) -> str:
    return f"{TRANSFER}:{donor}"


def unavailable(label: str, why: str) -> Extra:
    """A transfer column that stays empty, and why."""
    return Extra(Candidate(label, TRANSFER, "-", None, TrialSpec(label, 0, "none", ()), None),
                 "", missing=why)


def transfer_from(donor: Source) -> Extra:
    """`donor`'s best context (what its export takes) as a context for another study."""
    from icl_search.study.confirm import summarize

    label = transfer_label(donor.name)
    summary = summarize(donor.study)
    best = summary.best if summary is not None else None
    if best is None:
        return unavailable(label, f"{donor.name} was never confirmed: it has no bundle")
    if best.trial is None:
        return unavailable(label, f"{donor.name}'s best ({best.label}) is no stored trial")
    trial = donor.study.trials[best.trial]
    info = donor.export_info
    spec_d = dict(trial.user_attrs[attrs.SPEC])
    system = (info.get("systems") or {}).get(spec_d["system_name"])
    if system is None:
        return unavailable(label, f"{donor.name}: its preamble {spec_d['system_name']!r} is "
                           "not stored (a study run by an older icl-search)")
    spec = TrialSpec.from_dict({**spec_d, "system_name": label})
    pool = info.get("pool_path") if spec.k else None
    blob = json.dumps([spec.to_dict(), system, pool], sort_keys=True, default=str)
    key = f"{TRANSFER}-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
    return Extra(Candidate(label, TRANSFER, key, None, spec, None), system, pool,
                 donor=best.label)


def evaluate_extras(src: Source, extras: list[Extra], *,
                    say: Callable[[str], None]) -> dict[str, str]:
    """Answer and judge the extras missing from `src`'s storage: loads the study's model and
    judges once. Returns label -> why an extra could not be evaluated."""
    from icl_search.pool import Pool
    from icl_search.study.build import build_audit, build_evaluator
    from icl_search.study.confirm import confirm_outside, confirm_queries, outside_rows

    missing = {e.candidate.label: e.missing for e in extras if e.missing}
    todo = [e for e in extras if not e.missing]
    stored = outside_rows(src.study, [e.candidate for e in todo])
    todo = [e for e in todo if e.candidate.label not in stored]
    if not todo:
        return missing
    if src.cfg is None:
        for e in todo:
            missing[e.candidate.label] = (f"not evaluated: the config of {src.name} is not "
                                          "found (give its .toml)")
        return missing
    cfg = src.cfg
    say(f"{src.name}: answering {', '.join(e.candidate.label for e in todo)} on its confirm set")
    ev = build_evaluator(cfg, say=say)
    audit = build_audit(cfg, ev, say=say)
    queries = confirm_queries(cfg)
    own_pool = str(Path(ev.pool.path).resolve())
    shared: list[Extra] = []
    groups: list[tuple] = []
    for e in todo:
        c = e.candidate
        if e.pool_path is None or str(Path(e.pool_path).resolve()) == own_pool:
            shared.append(e)
        elif c.spec.strategy in ("fixed", "none"):
            donor = Pool.load(e.pool_path)
            pool = Pool([donor[i] for i in c.spec.fixed_ids], donor.path, donor.system)
            groups.append((ev.with_queries(queries, pool=pool, systems={c.label: e.system},
                                           audit=audit), [c]))
        else:
            missing[c.label] = (f"a {c.spec.strategy} context over another pool "
                                f"({e.pool_path}) is not answered here")
    if shared:
        systems = {**ev.systems, **{e.candidate.label: e.system for e in shared}}
        groups.insert(0, (ev.with_queries(queries, systems=systems, audit=audit),
                          [e.candidate for e in shared]))
    try:
        confirm_outside(src.study, cfg, ev, groups, audit=audit, say=say)
    finally:
        del ev, audit, groups
        gc.collect()  # the next study loads its own model
    return missing
