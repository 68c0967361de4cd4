"""Study reports: baseline vs best per aspect, optimisation history, parameter importances,
as a Markdown summary with PNG plots (matplotlib) and interactive HTML (plotly)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from icl_search.io import atomic_write
from icl_search.judge import ALL_ASPECTS


def _baseline(study: optuna.Study):
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("role") == "baseline":
            return t
    return None


def _best(study: optuna.Study):
    if len(study.directions) > 1:
        front = study.best_trials
        return max(front, key=lambda t: t.values[0]) if front else None
    return study.best_trial


def write_report(cfg, study: optuna.Study, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    from icl_search.study.runner import trials_frame

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    base, best = _baseline(study), _best(study)
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
        path = out / name
        with atomic_write(path) as fh:
            fh.write(fig.to_html(include_plotlyjs="cdn"))
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

    aspects = [a for a in ALL_ASPECTS
               if any(a in (t.user_attrs.get("aspects") or {}) for t in (base, best) if t)]
    if best is not None and aspects:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.38
        xs = range(len(aspects))
        for off, (label, t) in zip((-width / 2, width / 2), (("baseline", base), ("best", best))):
            if t is None:
                continue
            vals = [(t.user_attrs.get("aspects") or {}).get(a) or 0 for a in aspects]
            ax.bar([x + off for x in xs], vals, width, label=f"{label} (trial {t.number})")
        ax.set_xticks(list(xs), aspects)
        ax.set_ylim(1, 5)
        ax.set_ylabel("judge score (1-5)")
        ax.legend()
        save_png(fig, "aspects.png")

    lines = [f"# Study `{cfg.name}`", "",
             f"- trials: {len(study.trials)} ({len(completed)} complete)",
             f"- judge: `{cfg.judge.spec}`, eval set: `{cfg.eval.path}`", ""]
    if best is not None:
        lines += ["| aspect | baseline | best |", "| --- | --- | --- |"]
        for a in aspects + ["overall"]:
            def val(t):
                if t is None:
                    return "-"
                v = t.values[0] if a == "overall" else (t.user_attrs.get("aspects") or {}).get(a)
                return "-" if v is None else f"{v:.3f}"
            lines.append(f"| {a} | {val(base)} | {val(best)} |")
        spec = best.user_attrs.get("spec", {})
        lines += ["", f"Best trial {best.number}: preamble `{spec.get('system_name')}`, "
                  f"k={spec.get('k')}, strategy `{spec.get('strategy')}`, "
                  f"examples {spec.get('fixed_ids')}, "
                  f"context {best.user_attrs.get('context_tokens')} tokens."]
    if importances:
        lines += ["", "## Parameter importances", ""]
        lines += [f"- {k}: {v if isinstance(v, str) else f'{v:.3f}'}"
                  for k, v in importances.items()]
    from icl_search.study.screening import report_lines

    lines += report_lines(study, cfg.judge.screen_top)
    from icl_search.study.confirm import report_lines as confirm_lines

    lines += confirm_lines(study)
    lines += ["", "## Plots", ""] + [f"- [{p.name}]({p.name})" for p in written]
    df = trials_frame(study)
    csv = out / "trials.csv"
    with atomic_write(csv) as fh:
        df.write_csv(fh)
    md = out / "report.md"
    with atomic_write(md) as fh:
        fh.write("\n".join(lines) + "\n")
    return [md, csv, *written]
