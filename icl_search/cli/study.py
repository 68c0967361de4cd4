"""`icl-search study run|worker|status|trials|trial|report|validate|confirm`.

`run`/`worker`/`validate` check the config before any model loads (icl_search.study.preflight);
the read-only commands (`status`, `trials`, `trial`, `report`) load a study, never create one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

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


class _Live:
    """Live progress of `study run`: a rich display when stderr is a terminal, else a plain
    line on stderr at most every `every` seconds (and at the end)."""

    def __init__(self, every: float = 10.0):
        self.tty = err.is_terminal
        # None: nothing printed yet, so the first update always prints (a monotonic clock's
        # zero is arbitrary: 0.0 here once hid the first line on a machine up < `every` s)
        self.every, self._last = every, None
        self._progress = None

    def __enter__(self):
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[best]}"),
                console=err, transient=False)
            self._progress.__enter__()
            self._trials = self._progress.add_task("trials", total=None, best="")
            self._batch = self._progress.add_task("batch: generations + judgements",
                                                  total=None, best="")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def say(self, msg: str) -> None:
        (self._progress.console if self._progress else err).print(msg, highlight=False)

    def __call__(self, p) -> None:
        best = "-" if p.best is None else f"{p.best:.3f}"
        if self._progress is not None:
            self._progress.update(self._trials, completed=p.done, total=p.total,
                                  best=f"best {best}")
            self._progress.update(self._batch, completed=p.batch_items, total=p.batch_total)
            return
        now = time.monotonic()
        final = p.done >= p.total and p.batch_items >= p.batch_total
        if self._last is not None and now - self._last < self.every and not final:
            return
        self._last = now
        eta = (p.elapsed / p.done * (p.total - p.done)) if p.done else None
        print(f"progress: trials {p.done}/{p.total}, batch items {p.batch_items}/"
              f"{p.batch_total}, elapsed {p.elapsed:.0f}s, ETA "
              f"{'-' if eta is None else f'{eta:.0f}s'}, best {best}",
              file=sys.stderr, flush=True)


def _run(config: Path, storage: str | None, n_trials: int | None,
         timeout_minutes: float | None, worker: bool, every: float = 10.0) -> None:
    from icl_search.study import build_evaluator, run_study
    from icl_search.study.preflight import preflight
    from icl_search.study.storage import redact

    cfg = _config(config, **{"optuna.storage": storage, "optuna.n_trials": n_trials,
                             "optuna.timeout_minutes": timeout_minutes})
    preflight(cfg, storage)  # before any model loads; an IclSearchError ends with exit 2
    with _Live(every) as live:
        say = live.say
        say(f"study [bold]{cfg.name}[/] -> {redact(cfg.storage_url)}"
            + (" (worker)" if worker else ""))
        ev = build_evaluator(cfg, say=say)
        s = run_study(cfg, ev, progress=say, monitor=live)
    st = s.stats
    say(f"done: {s.finished} finished, {s.pruned} pruned, {s.failed} failed in "
        f"{s.seconds:.0f}s; generations {st['generated']} ({st['gen_cached']} cached), "
        f"judgements {st['judged']} ({st['judge_cached']} cached)")
    _status(cfg, storage)


@study_app.command("run")
def run(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    storage: str | None = typer.Option(None, help="Optuna storage URL (overrides the config)."),
    n_trials: int | None = typer.Option(None, min=1, help="Finished trials to reach."),
    timeout_minutes: float | None = typer.Option(None, help="Stop asking new trials after."),
    progress_every: float = typer.Option(10.0, min=0, help="Seconds between plain progress "
                                         "lines when stderr is not a terminal."),
) -> None:
    """Run the study, or resume it: finished trials are kept, interrupted ones retried.
    Live progress on stderr: trials done, the current batch's generations and judgements,
    elapsed time, ETA and the best score so far."""
    _run(config, storage, n_trials, timeout_minutes, worker=False, every=progress_every)


@study_app.command("worker")
def worker(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    storage: str = typer.Option(..., help="Shared storage URL, e.g. postgresql://user@host/db."),
    n_trials: int | None = typer.Option(None, min=1, help="Finished trials to reach "
                                           "(default: the config's optuna.n_trials)."),
) -> None:
    """Join a study as one more worker (run this on each machine)."""
    _run(config, storage, n_trials, None, worker=True)


@study_app.command("confirm")
def confirm_cmd(
    config: Path = typer.Argument(..., help="Study config (TOML) with a confirm set in [eval]."),
    storage: str | None = typer.Option(None, help="Optuna storage URL (overrides the config)."),
    top: int | None = typer.Option(None, min=1, help="Trials to confirm, by search score "
                                      "(default: eval.confirm_top)."),
    review: Path | None = typer.Option(None, "--review", help="Also write a blind review "
                                          "folder: the confirm answers of the top trial against "
                                          "each baseline's (`icl-search review serve DIR`)."),
) -> None:
    """Evaluate the top trials and the baseline(s) on the confirm set (queries the search never
    saw): confirm score, gain over each baseline with a 95% bootstrap interval and a Wilcoxon
    p-value, shrinkage. Results are stored in the study: a rerun pays only for what is missing."""
    from icl_search.errors import IclSearchError
    from icl_search.study import build_evaluator, load_study
    from icl_search.study.confirm import ConfirmError, answer_files, confirm
    from icl_search.study.confirm_md import table_lines, verdict_lines

    cfg = _config(config, **{"optuna.storage": storage})
    if not cfg.eval.has_confirm:
        fail(f"{cfg.source}: no confirm set: add eval.confirm (a query file) or "
             "eval.confirm_fraction to the [eval] section")
    try:  # confirms an existing study: never creates a storage or an empty study
        study = load_study(cfg, storage)
    except IclSearchError as exc:
        fail(f"{exc} (run `icl-search study run {config}` first)")
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        fail(f"study {cfg.name} has no finished trial yet: run `icl-search study run {config}`")
    say = lambda m: err.print(m, highlight=False)
    if review is not None:
        from icl_search.review import check_target

        check_target(review)  # before the model work: a review with verdicts is not replaced
    try:
        ev = build_evaluator(cfg, say=say)
        s = confirm(study, cfg, ev, top=top, say=say)
    except (IclSearchError, ConfirmError) as exc:
        fail(str(exc))
    st = s.stats
    say(f"confirmed {len(s.rows)} candidates on {s.n_queries} queries ({s.evaluated} evaluated "
        f"now, the rest stored); generations {st['generated']} ({st['gen_cached']} cached)")
    files = answer_files(cfg, study)
    if files:
        say(f"confirm answers (id, query, answer JSONL per context): "
            f"{next(iter(files.values())).parent}")
    typer.echo("\n".join(table_lines(s) + ["", *verdict_lines(s)]))
    if review is not None:
        _confirm_review(s, files, review)


def _confirm_review(s, files: dict[str, Path], out: Path) -> None:
    """The blind review of `study confirm --review`: the top trial's confirm answers against
    each baseline's, pairs within a query."""
    from icl_search.review import load_answers, make_review

    top = s.top
    bases = [r.label for r in s.rows if r.role != "trial" and r.label in files]
    if top is None or top.label not in files or not bases:
        fail("--review: no confirm answers of a trial and a baseline to compare")
    names = [top.label, *bases]
    made = make_review({n: load_answers(files[n]) for n in names},
                       [(top.label, b) for b in bases], out)
    typer.echo("\n".join(["", *made.lines(), f"next: icl-search review serve {out}"]))


@study_app.command("validate")
def validate(config: Path = typer.Argument(..., help="Study config (TOML)."),
             storage: str | None = typer.Option(None, help="Storage URL to check.")) -> None:
    """Check a config without loading any model: fields, pool and eval files, pool ids, spec
    prefixes, model folders, and that the storage opens (a new SQLite file is not created)."""
    from icl_search.study.preflight import preflight

    cfg = _config(config, **{"optuna.storage": storage})
    preflight(cfg, storage, create=False)
    typer.echo(f"ok: study {cfg.name!r}, {len(cfg.search.system_prompts)} preambles, "
               f"k in {list(cfg.search.k)}, {cfg.optuna.n_trials} trials")


def _status(cfg, storage: str | None) -> None:
    from icl_search.study import load_study
    from icl_search.study.runner import missing_references

    study = load_study(cfg, storage)
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
    if study.user_attrs.get("baseline_enqueued") and not counts.get("RUNNING") and \
            not counts.get("WAITING"):
        for role in missing_references(study, cfg):
            Console().print(f"warning: no finished {role} trial: the report cannot compare "
                            "against it", highlight=False)


@study_app.command("status")
def status(config: Path = typer.Argument(..., help="Study config (TOML)."),
           storage: str | None = typer.Option(None, help="Storage URL (default: the "
                                                 "config's optuna.storage).")) -> None:
    """Progress and the best trial so far."""
    _status(_config(config), storage)


@study_app.command("trials")
def trials(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    storage: str | None = typer.Option(None, help="Storage URL (default: the config's "
                                          "optuna.storage)."),
    csv: Path | None = typer.Option(None, help="Also write the table as CSV."),
) -> None:
    """A table of every trial: parameters, score, aspects, context tokens."""
    from icl_search.io import atomic_write
    from icl_search.report import trials_frame
    from icl_search.study import load_study

    cfg = _config(config)
    df = trials_frame(load_study(cfg, storage))
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


@study_app.command("trial")
def trial_cmd(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    number: int = typer.Argument(..., help="Trial number (see `study trials`)."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Parquet file for the trial's per-query records."),
    storage: str | None = typer.Option(None, help="Storage URL (default: the config's "
                                          "optuna.storage)."),
) -> None:
    """Export one trial's prompts, answers and per-query scores (one row per query)."""
    import polars as pl

    from icl_search.io import atomic_write
    from icl_search.study import load_study, load_trial_records

    if out.suffix != ".parquet":
        fail(f"--out {out}: expected a .parquet file")
    cfg = _config(config)
    study = load_study(cfg, storage)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        fail(f"trial {number}: no such trial in study {cfg.name} (trials 0-{len(trials) - 1})"
             if trials else f"trial {number}: study {cfg.name} has no trials yet")
    t = trials[number]
    recs = load_trial_records(cfg, t)
    if not recs:
        fail(f"trial {number} ({t.state.name.lower()}) has no stored records")
    rows = [{"trial": number, "query_id": r["query_id"], "category": r["category"],
             "query": r["query"], "prompt": r["prompt"], "answer": r["answer"],
             "finish_reason": r["finish_reason"], "context_tokens": r["context_tokens"],
             "examples": r["examples"], "dropped": r["dropped"], "overall": r["overall"],
             **{f"score_{a}": v for a, v in (r.get("scores") or {}).items()}} for r in recs]
    df = pl.DataFrame(rows, infer_schema_length=None)
    with atomic_write(out, "wb") as fh:
        df.write_parquet(fh)
    typer.echo(f"{out}: {df.height} queries of trial {number} ({t.state.name.lower()})")


@study_app.command("report")
def report(
    config: Path = typer.Argument(..., help="Study config (TOML)."),
    out: Path = typer.Option(Path("runs/report"), "--out", "-o",
                             help="Folder for report.md, PNG and HTML."),
    storage: str | None = typer.Option(None, help="Storage URL (default: the config's "
                                          "optuna.storage)."),
    review: Path | None = typer.Option(None, "--review", help="A blind review folder "
                                          "(`icl-search review make`): add its score."),
) -> None:
    """Baseline vs best per aspect, optimisation history and parameter importances."""
    from icl_search.report import write_report
    from icl_search.study import load_study

    cfg = _config(config)
    study = load_study(cfg, storage)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        fail(f"study {cfg.name} has no finished trial yet: run `icl-search study run {config}`")
    if review is not None:
        from icl_search.review import ReviewFolder

        ReviewFolder(review)  # not a review folder: one message before any work
    paths = write_report(cfg, study, out, review=review)
    for p in paths:
        typer.echo(str(p))
    from icl_search.study.confirm import summarize
    from icl_search.study.confirm_md import gain_lines, verdict_lines

    s = summarize(study)
    if s is not None:  # the judges side by side, and the verdict the report names
        typer.echo("\n".join(["", *gain_lines(s), "", *verdict_lines(s)]))
