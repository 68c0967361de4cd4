"""`icl-search study run|worker|status|trials|report|validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_search.cli import app, fail

study_app = typer.Typer(help="Search for the best URIAL context with an Optuna study.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")
err = Console(stderr=True)




def _config(path: Path, **overrides):
    from icl_search.study import ConfigError, load_config

    try:
        return load_config(path, **overrides)
    except ConfigError as exc:
        fail(str(exc))


def _run(config: Path, storage: Optional[str], n_trials: Optional[int],
         timeout_minutes: Optional[float], worker: bool) -> None:
    from icl_search.errors import IclSearchError
    from icl_search.study import build_evaluator, run_study
    from icl_search.study.runner import redact

    cfg = _config(config, **{"optuna.storage": storage, "optuna.n_trials": n_trials,
                             "optuna.timeout_minutes": timeout_minutes})
    cfg.check_engine()
    say = lambda m: err.print(m, highlight=False)  # noqa: E731
    say(f"study [bold]{cfg.name}[/] -> {redact(cfg.storage_url)}"
        + (" (worker)" if worker else ""))
    try:
        ev = build_evaluator(cfg, say=say)
        s = run_study(cfg, ev, progress=say)
    except IclSearchError as exc:
        fail(str(exc))
    st = s.stats
    say(f"done: {s.finished} finished, {s.pruned} pruned, {s.failed} failed in "
        f"{s.seconds:.0f}s; generations {st['generated']} ({st['gen_cached']} cached), "
        f"judgements {st['judged']} ({st['judge_cached']} cached)")
    _status(cfg, storage)


@study_app.command("run")
def run(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (overrides the config)."),
    n_trials: Optional[int] = typer.Option(None, min=1, help="Finished trials to reach."),
    timeout_minutes: Optional[float] = typer.Option(None, help="Stop asking new trials after."),
) -> None:
    """Run the study, or resume it: finished trials are kept, interrupted ones retried."""
    _run(config, storage, n_trials, timeout_minutes, worker=False)


@study_app.command("worker")
def worker(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    storage: str = typer.Option(..., help="Shared storage URL, e.g. postgresql://user@host/db."),
    n_trials: Optional[int] = typer.Option(None, min=1),
) -> None:
    """Join a study as one more worker (run this on each machine)."""
    _run(config, storage, n_trials, None, worker=True)


@study_app.command("confirm")
def confirm_cmd(
    config: Path = typer.Argument(..., help="Study config (TOML) with a confirm set in [eval]."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (overrides the config)."),
    top: Optional[int] = typer.Option(None, min=1, help="Trials to confirm, by search score "
                                      "(default: eval.confirm_top)."),
) -> None:
    """Evaluate the top trials and the baseline(s) on the confirm set (queries the search never
    saw): confirm score, gain over each baseline with a 95% bootstrap interval and a Wilcoxon
    p-value, shrinkage. Results are stored in the study: a rerun pays only for what is missing."""
    from icl_search.errors import IclSearchError
    from icl_search.study import build_evaluator, open_study
    from icl_search.study.confirm import ConfirmError, confirm, table_lines

    cfg = _config(config, **{"optuna.storage": storage})
    if not cfg.eval.has_confirm:
        fail(f"{cfg.source}: no confirm set: add eval.confirm (a query file) or "
             "eval.confirm_fraction to the [eval] section")
    study = open_study(cfg, storage)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        fail(f"study {cfg.name} has no finished trial yet: run `icl-search study run {config}`")
    say = lambda m: err.print(m, highlight=False)  # noqa: E731
    try:
        ev = build_evaluator(cfg, say=say)
        s = confirm(study, cfg, ev, top=top, say=say)
    except (IclSearchError, ConfirmError) as exc:
        fail(str(exc))
    st = s.stats
    say(f"confirmed {len(s.rows)} candidates on {s.n_queries} queries ({s.evaluated} evaluated "
        f"now, the rest stored); generations {st['generated']} ({st['gen_cached']} cached)")
    typer.echo("\n".join(table_lines(s) + ["", s.sentence()]))


@study_app.command("validate")
def validate(config: Path = typer.Argument(...)) -> None:
    """Check a config (fields, files) without loading any model."""
    cfg = _config(config)
    cfg.check_engine()
    typer.echo(f"ok: study {cfg.name!r}, {len(cfg.search.system_prompts)} preambles, "
               f"k in {list(cfg.search.k)}, {cfg.optuna.n_trials} trials")


def _status(cfg, storage: Optional[str]) -> None:
    from icl_search.study import open_study

    study = open_study(cfg, storage)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    line = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
    Console().print(f"study {cfg.name}: {done}/{cfg.optuna.n_trials} finished ({line or 'empty'})",
                    highlight=False)
    if not cfg.optuna.multi_objective and counts.get("COMPLETE"):
        b = study.best_trial
        spec = b.user_attrs.get("spec", {})
        Console().print(f"best: trial {b.number} score {b.value:.3f} "
                        f"({spec.get('system_name')}, k={spec.get('k')}, "
                        f"{spec.get('strategy')})", highlight=False)
    elif counts.get("COMPLETE"):
        Console().print(f"Pareto front: trials {[t.number for t in study.best_trials]}")


@study_app.command("status")
def status(config: Path = typer.Argument(...),
           storage: Optional[str] = typer.Option(None)) -> None:
    """Progress and the best trial so far."""
    _status(_config(config), storage)


@study_app.command("trials")
def trials(
    config: Path = typer.Argument(...),
    storage: Optional[str] = typer.Option(None),
    csv: Optional[Path] = typer.Option(None, help="Also write the table as CSV."),
) -> None:
    """A table of every trial: parameters, score, aspects, context tokens."""
    from icl_search.io import atomic_write
    from icl_search.study import open_study, trials_frame

    cfg = _config(config)
    df = trials_frame(open_study(cfg, storage))
    if df.is_empty():
        typer.echo("no trials yet")
        return
    t = Table(*[c for c in df.columns if c not in ("examples",)])
    for row in df.iter_rows(named=True):
        t.add_row(*[_fmt(v) for k, v in row.items() if k != "examples"])
    Console().print(t)
    if csv:
        with atomic_write(csv) as fh:
            df.write_csv(fh)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


@study_app.command("report")
def report(
    config: Path = typer.Argument(...),
    out: Path = typer.Option(Path("runs/report"), help="Folder for report.md, PNG and HTML."),
    storage: Optional[str] = typer.Option(None),
) -> None:
    """Baseline vs best per aspect, optimisation history and parameter importances."""
    from icl_search.report import write_report
    from icl_search.study import open_study

    cfg = _config(config)
    study = open_study(cfg, storage)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        fail(f"study {cfg.name} has no finished trial yet: run `icl-search study run {config}`")
    paths = write_report(cfg, study, out)
    for p in paths:
        typer.echo(str(p))
