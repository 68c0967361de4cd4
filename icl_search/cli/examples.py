"""One example per command, shown at the end of its `--help` (the Typer epilog).

Kept in one table so that `tests/test_cli_help.py` can insist every command has one: a new
command without an example fails that test.
"""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "generate": "icl-search generate queries.jsonl -o answers.jsonl --bundle runs/demo/bundle.json",
    "select": 'icl-search select runs/demo/bundle.json "How do I sort a list?"',
    "serve": "icl-search serve runs/demo/bundle.json --port 8000",
    "export": "icl-search export studies/demo.toml -o runs/demo/bundle.json --format urial",
    "models prepare": "icl-search models prepare",
    "models list": "icl-search models list",
    "pool validate": "icl-search pool validate pools/default.jsonl",
    "pool import": "icl-search pool import inst_1k.txt --format urial -o pools/urial.jsonl",
    "pool stats": "icl-search pool stats pools/default.jsonl",
    "pool bootstrap": ("icl-search pool bootstrap --bundle runs/demo/bundle.json --queries q.jsonl"
                       " --pool pools/default.jsonl -o pools/grown.jsonl --threshold 3.5"),
    "references build": ("icl-search references build queries.jsonl --engine "
                         "openai:http://127.0.0.1:8000/v1 -o queries.ref.jsonl"),
    "judge prepare": "icl-search judge prepare --data ../shared/data",
    "judge score": "icl-search judge score answers.jsonl -o scores.parquet --judge default",
    "judge calibrate": "icl-search judge calibrate --judge default --queries 40",
    "judge distill": ("icl-search judge distill --scores scores.parquet --responses answers.jsonl"
                      " -o judges/cheap"),
    "study run": "icl-search study run studies/demo.toml",
    "study worker": ("icl-search study worker studies/gpu-7b.toml "
                     "--storage postgresql+psycopg://user@db/optuna"),
    "study confirm": "icl-search study confirm studies/demo.toml --top 3",
    "study validate": "icl-search study validate studies/demo.toml",
    "study status": "icl-search study status studies/demo.toml",
    "study trials": "icl-search study trials studies/demo.toml --csv runs/demo/trials.csv",
    "study trial": "icl-search study trial studies/demo.toml 3 -o runs/demo/trial3.parquet",
    "study report": "icl-search study report studies/demo.toml -o runs/demo/report",
    "propose preambles": "icl-search propose preambles studies/demo.toml --n 4",
    "propose restyle": "icl-search propose restyle studies/demo.toml --limit 20",
    "propose run": "icl-search propose run studies/demo.toml --rounds 2",
    "propose report": "icl-search propose report studies/demo.toml",
}


def epilog(name: str) -> str | None:
    """The epilog for command `name` ("study run"), or None when it has no example."""
    ex = EXAMPLES.get(name)
    return None if ex is None else f"Example: {ex}"


def attach(app) -> None:
    """Set every registered command's epilog from `EXAMPLES` (groups included)."""
    def walk(typer_app, prefix: str) -> None:
        for info in typer_app.registered_commands:
            name = (prefix + " " + (info.name or info.callback.__name__)).strip()
            if info.epilog is None:
                info.epilog = epilog(name)
        for group in typer_app.registered_groups:
            walk(group.typer_instance, (prefix + " " + (group.name or "")).strip())

    walk(app, "")
