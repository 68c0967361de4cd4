"""`icl-search export STUDY`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from icl_search.cli import app, fail

err = Console(stderr=True)




@app.command("export")
def export(
    study: str = typer.Argument(..., help="A study config (.toml), or a study name with --storage."),
    out: Path = typer.Option(..., "--out", "-o", help="The bundle JSON to write."),
    storage: str | None = typer.Option(None, help="Storage URL (default: the config's)."),
    trial: int | None = typer.Option(None, help="Trial number (default: the confirmed best "
                                        "when the study was confirmed, else the best search "
                                        "score; multi-objective: the best-scoring Pareto point)."),
    search_best: bool = typer.Option(False, "--search-best", help="Take the best search score "
                                     "even when the study was confirmed."),
    format: str = typer.Option("json", "--format", help="json, or urial to also write "
                               "<out>.urial.txt in the URIAL repository's prompt-file format "
                               "(fixed sets only: a retrieval bundle is written alone, with a "
                               "note); chat-template to also write <out>.jinja, a chat template "
                               "for `vllm serve --chat-template` (fixed sets only)."),
    copy_pool: bool = typer.Option(False, "--copy-pool", help="Copy a retrieval bundle's pool "
                                   "(and its index) into the bundle's folder and point the "
                                   "bundle there, so the folder can be copied anywhere."),
) -> None:
    """Write the best (or a chosen) trial as a self-contained prompt bundle."""
    import optuna

    from icl_search.bundle import NO_URIAL_FILE, BundleError
    from icl_search.study.export import ExportError, export_bundle
    from icl_search.study.storage import redact

    if format not in ("json", "urial", "chat-template"):
        fail(f"--format: {format!r} is not one of json, urial, chat-template")
    if study.endswith(".toml"):
        from icl_search.study import ConfigError, load_config, load_study

        try:
            cfg = load_config(study)
        except ConfigError as exc:
            fail(str(exc))
        url = storage or cfg.storage_url
        st = load_study(cfg, url)  # read-only: never creates a study
    else:
        if not storage:
            fail("a study name needs --storage URL (or pass the study's config .toml)")
        url = storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            fail(f"no study storage at {url[len('sqlite:///'):]}")  # and do not create one
        try:
            st = optuna.load_study(study_name=study, storage=url)
        except KeyError:
            names = optuna.get_all_study_names(url)
            fail(f"no study named {study!r} in {redact(url)}; studies there: "
                 f"{', '.join(sorted(names)) or 'none'}")
    urial = out.with_suffix(".urial.txt") if format == "urial" else None
    try:
        b = export_bundle(st, out, trial_number=trial, storage_url=url, urial_out=urial,
                          search_best=search_best)
    except (ExportError, BundleError) as exc:
        fail(str(exc))
    if copy_pool and b.mode == "retrieval":
        from icl_search.bundle import copy_beside

        try:
            b = copy_beside(b, out)
        except BundleError as exc:
            fail(str(exc))
        err.print(f"copied the pool beside the bundle: {out.parent / b.retrieval.pool} "
                  "(the folder can be copied anywhere)", highlight=False, soft_wrap=True)
    sc = b.scores
    wrote_urial = urial is not None and b.mode == "fixed"
    err.print(f"exported trial {b.provenance.trial} (score {sc.overall:.3f}, mode {b.mode}) "
              f"-> {out}" + (f" and {urial}" if wrote_urial else ""), highlight=False)
    if urial is not None and not wrote_urial:
        # a URIAL file left by an earlier export of another trial would not match this bundle
        stale = urial.exists()
        if stale:
            urial.unlink()
        err.print(f"no {urial.name}: {NO_URIAL_FILE}"
                  + (" (removed the stale one from an earlier export)" if stale else "")
                  + f"; see its prompt for a query with `icl-search select {out} \"QUERY\"`",
                  highlight=False, soft_wrap=True)
    if format == "chat-template":
        from icl_search.chat_template import NO_CHAT_TEMPLATE, to_chat_template
        from icl_search.io import atomic_write

        jinja = out.with_suffix(".jinja")
        if b.mode == "fixed":
            with atomic_write(jinja) as fh:
                fh.write(to_chat_template(b))
            err.print(f"chat template -> {jinja} (vllm serve {b.model} --chat-template {jinja})",
                      highlight=False, soft_wrap=True)
        else:
            stale = jinja.exists()
            if stale:  # another trial's template would not match this bundle
                jinja.unlink()
            err.print(f"no {jinja.name}: {NO_CHAT_TEMPLATE}"
                      + (" (removed the stale one from an earlier export)" if stale else "")
                      + f"; serve the bundle with `icl-search serve {out}`",
                      highlight=False, soft_wrap=True)
    if sc.confirm is not None:
        err.print(sc.confirm.verdict, highlight=False)
    _say_judges(st, b, trial, search_best)


def _say_judges(st, bundle, trial: int | None, search_best: bool) -> None:
    """The judges side by side and, when the confirmation kept the baseline, one line saying
    so (with the way to export the search's best anyway)."""
    from icl_search.study.confirm import summarize
    from icl_search.study.confirm_md import gain_lines

    s = summarize(st)
    if s is None:
        return
    err.print("\n".join(gain_lines(s)), highlight=False, soft_wrap=True)
    if trial is None and not search_best and not s.beat_baseline:
        err.print(f"export kept the baseline (trial {bundle.provenance.trial}): no trial is "
                  "confirmed by every judge; --search-best or --trial N exports another",
                  highlight=False, soft_wrap=True)
