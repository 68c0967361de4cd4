"""Study reports and trial tables (the one home of both): `trials_frame` (one row per trial, as
`study trials` and the report's trials.csv show it) and `write_report`: baseline vs best per
aspect, optimisation history, parameter importances, as a Markdown summary with PNG plots
(matplotlib) and interactive HTML (plotly, its JavaScript embedded so the files work offline)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from icl_search.io import atomic_write
from icl_search.judge import ALL_ASPECTS


def trials_frame(study: optuna.Study):
    """One row per trial: number, state, value, parameters, aspects (a polars DataFrame)."""
    import polars as pl

    from icl_search.study import attrs

    rows = []
    for t in study.get_trials(deepcopy=False):
        spec = t.user_attrs.get("spec", {})
        row = {
            "number": t.number, "state": t.state.name,
            # a pruned trial's stored value is its last per-query report: not a score
            "score": t.values[0] if t.values and t.state != TrialState.PRUNED else None,
            "partial": (sum(t.intermediate_values.values()) / len(t.intermediate_values)
                        if t.state == TrialState.PRUNED and t.intermediate_values else None),
            "role": t.user_attrs.get("role", ""),
            "system": spec.get("system_name"), "k": spec.get("k"),
            "strategy": spec.get("strategy"),
            "examples": ",".join(spec.get("fixed_ids") or []),
            "mmr_lambda": spec.get("mmr_lambda"),
            "context_tokens": t.user_attrs.get("context_tokens"),
            "n_queries": t.user_attrs.get("n_queries"),
            "screen_score": t.user_attrs.get("screen_score"),
            "expensive_judge": t.user_attrs.get("expensive_judge"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        }
        for a, m in (t.user_attrs.get("aspects") or {}).items():
            row[a] = m
        h = t.user_attrs.get(attrs.HYGIENE)
        if h:  # answers with a hygiene defect, still failing after cleaning, at max_tokens
            row["defects"] = h.get("defective")
            row["hygiene_failed"] = h.get("failed")
            row["at_max_tokens"] = h.get("max_tokens")
        fb = t.user_attrs.get("feedback") or {}
        for source, v in (fb.get("values") or {}).items():  # each feedback source on its own
            if source != "judge":
                row[f"fb_{source}"] = v
        if fb:
            row["fb_combined"] = fb.get("combined")
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _baseline(study: optuna.Study):
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("role") == "baseline":
            return t
    return None


def _search_best(study: optuna.Study):
    if len(study.directions) > 1:
        front = study.best_trials
        return max(front, key=lambda t: t.values[0]) if front else None
    return study.best_trial


def _best(study: optuna.Study):
    """(the one best the report names, how it was chosen): the confirmed best that `export`
    takes (the baseline when no trial is confirmed), else the best search score."""
    from icl_search.study.export import pick_confirmed

    trial, summary = pick_confirmed(study)
    if trial is not None:
        how = "confirmed" if summary.beat_baseline else "kept: no trial is confirmed"
        return trial, how
    return _search_best(study), "best search score"


def _single_score(trials) -> bool:
    """True when the judge gives one score per answer (every regular aspect the same mean)."""
    means = [[v for a, v in (t.user_attrs.get("aspects") or {}).items() if a != "safety"]
             for t in trials if t is not None]
    means = [m for m in means if m]
    return bool(means) and all(len(m) > 1 and max(m) - min(m) < 1e-9 for m in means)


def _columns(trial, single: bool) -> dict[str, float | None]:
    """What the report shows per trial: aspect means, or one score (and safety)."""
    asp = dict(trial.user_attrs.get("aspects") or {}) if trial is not None else {}
    if not single:
        return asp
    quality = next((v for a, v in asp.items() if a != "safety"), None)
    return {"score": quality, **({"safety": asp["safety"]} if "safety" in asp else {})}


def write_report(cfg, study: optuna.Study, out: Path) -> list[Path]:
    from icl_search.extras import require

    matplotlib = require("matplotlib")  # the `plots` extra (matplotlib, plotly)
    require("plotly")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    base = _baseline(study)
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    tname = "score"

    def save_png(ax_or_fig, name: str) -> None:
        fig = getattr(ax_or_fig, "figure", ax_or_fig)
        if hasattr(fig, "get_figure") and fig.get_figure() is not None:
            fig = fig.get_figure()
        path = out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close("all")
        written.append(path)

    def save_html(fig, name: str) -> None:
        # offline: the pages load plotly.min.js from their own folder, written once, no CDN
        js = out / "plotly.min.js"
        if js not in written:
            from plotly.offline import get_plotlyjs

            with atomic_write(js) as fh:
                fh.write(get_plotlyjs())
            written.append(js)
        path = out / name
        with atomic_write(path) as fh:
            fh.write(fig.to_html(include_plotlyjs="directory"))
        written.append(path)

    save_png(vis_mpl.plot_optimization_history(study, target=target, target_name=tname),
             "history.png")
    save_html(vis.plot_optimization_history(study, target=target, target_name=tname),
              "history.html")
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    importances = None
    if len(completed) >= 3:
        try:
            importances = optuna.importance.get_param_importances(study, target=target)
            save_png(vis_mpl.plot_param_importances(study, target=target, target_name=tname),
                     "importances.png")
            save_html(vis.plot_param_importances(study, target=target, target_name=tname),
                      "importances.html")
        except (RuntimeError, ValueError) as exc:  # e.g. a single distinct value per param
            importances = {"(not computable)": str(exc)}
    if len(study.directions) > 1:
        save_html(vis.plot_pareto_front(study, target_names=["score", "context tokens"]),
                  "pareto.html")

    lines = _head_lines(cfg, study, base, completed, plt, save_png)
    lines += _section_lines(cfg, study, importances)
    lines += ["", "## Plots", ""] + [f"- [{p.name}]({p.name})" for p in written
                                     if p.suffix != ".js"]
    df = trials_frame(study)
    csv = out / "trials.csv"
    with atomic_write(csv) as fh:
        df.write_csv(fh)
    md = out / "report.md"
    with atomic_write(md) as fh:
        fh.write("\n".join(lines) + "\n")
    return [md, csv, *written]


def _aspects_plot(plt, shown, cols, names, single: bool, save_png) -> None:
    fig, ax = plt.subplots(figsize=(7 if not single else 4.5, 3.5))
    width = 0.8 / len(shown)
    xs = range(len(names))
    for i, (label, t) in enumerate(shown):
        vals = [cols[label].get(a) or 0 for a in names]
        ax.bar([x + (i - (len(shown) - 1) / 2) * width for x in xs], vals, width,
               label=f"{label} (trial {t.number})")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(1, 5)
    ax.set_ylabel("judge score (1-5)" if not single else "judge score (one per answer)")
    ax.legend(fontsize=7)
    save_png(fig, "aspects.png")


def _hygiene_lines(shown) -> list[str]:
    """Hygiene of the shown trials' answers on the search split."""
    from icl_search.hygiene import HygieneCounts
    from icl_search.study import attrs

    rows = [(label, t, HygieneCounts.from_dict(t.user_attrs.get(attrs.HYGIENE)))
            for label, t in shown if t.user_attrs.get(attrs.HYGIENE)]
    if not rows:
        return []
    out = ["Answer hygiene on the search split: " + "; ".join(
        f"{label} (trial {t.number}): {h.line()}" for label, t, h in rows) + "."]
    return out


def _head_lines(cfg, study: optuna.Study, base, completed, plt, save_png) -> list[str]:
    """The report's head: the one best (the exported one) against the baseline (and the
    search's top when it differs) on the search split, as aspects or as one score; the aspect
    plot of the same trials."""
    (best, how), top = _best(study), _search_best(study)
    shown = ([("baseline", base), (f"best ({how})", best)]
             if base is None or best is None or best.number != base.number
             else [(f"baseline = best ({how})", base)])
    if top is not None and best is not None and top.number != best.number:
        shown.append(("search top", top))
    shown = [(label, t) for label, t in shown if t is not None]
    single = _single_score([t for _, t in shown])
    cols = {label: _columns(t, single) for label, t in shown}
    names = [a for a in ([*ALL_ASPECTS] if not single else ["score", "safety"])
             if any(a in c for c in cols.values())]
    if best is not None and names:
        _aspects_plot(plt, shown, cols, names, single, save_png)
    lines = [f"# Study `{cfg.name}`", ""]
    if best is not None:
        lines += [f"Best: trial {best.number} ({how})"
                  + (f"; the search's top was trial {top.number}"
                     if top is not None and top.number != best.number else "")
                  + ".", ""]
    lines += [f"- trials: {len(study.trials)} ({len(completed)} complete)",
              f"- judge: `{cfg.judge.spec}`"
              + (" (one score per answer, and safety)" if single else "")
              + f", eval set: `{cfg.eval.path}`",
              f"- audit judges: {', '.join(f'`{a}`' for a in cfg.judge.audit) or 'none'}; "
              "hygiene floor " + ("on" if cfg.judge.hygiene_floor else
                                  "**off** (answers failing hygiene were scored as they are)"),
              ""]
    if base is None:
        lines += ["**Warning: the study has no finished baseline trial**: the baseline column "
                  "is empty; rerun `icl-search study run` to evaluate it.", ""]
    if best is not None:
        heads = [f"{label} (trial {t.number})" for label, t in shown]
        lines += ["| " + " | ".join(["search split", *heads]) + " |",
                  "|" + " --- |" * (len(heads) + 1)]
        for a in names + ["overall"]:
            cells = [a]
            for label, t in shown:
                v = t.values[0] if a == "overall" else cols[label].get(a)
                cells.append("-" if v is None else f"{v:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_hygiene_lines(shown)]
        spec = best.user_attrs.get("spec", {})
        lines += ["", f"Best trial {best.number}: preamble `{spec.get('system_name')}`, "
                  f"k={spec.get('k')}, strategy `{spec.get('strategy')}`, "
                  f"examples {spec.get('fixed_ids')}, "
                  f"context {best.user_attrs.get('context_tokens')} tokens."]
    return lines


def _section_lines(cfg, study: optuna.Study, importances) -> list[str]:
    """Parameter importances, screening, the confirmation, the proposal rounds."""
    lines: list[str] = []
    if importances:
        lines += ["", "## Parameter importances", ""]
        lines += [f"- {k}: {v if isinstance(v, str) else f'{v:.3f}'}"
                  for k, v in importances.items()]
    from icl_search.study.screening import report_lines

    lines += report_lines(study, cfg.judge.screen_top)
    from icl_search.study.confirm import report_lines as confirm_lines

    lines += confirm_lines(study)
    if getattr(cfg, "propose", None) is not None:  # the later rounds: which proposals won
        from icl_search.propose.tables import report_lines as propose_lines

        lines += propose_lines(cfg)
    return lines
