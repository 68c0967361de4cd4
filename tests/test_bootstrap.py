"""On-policy bootstrapping on the tiny model (real vLLM generation, real logprob judge, real
embedder for the leakage guard), the `pool bootstrap` CLI, and `pool.sources` in a study."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from icl_search.bootstrap import bootstrap, grow_pool
from icl_search.bundle import Bundle
from icl_search.cli import app
from icl_search.evalset import Query, load_queries
from icl_search.judge import make_judge
from icl_search.pool import Pool
from tests.conftest import REPO
from tests.helpers import write_config

runner = CliRunner()
POOL = REPO / "pools" / "default.jsonl"
DEV = REPO / "pools" / "eval" / "dev.jsonl"


@pytest.fixture()
def bundle_file(tmp_path, tiny_model_dir):
    pool = Pool.load(POOL)
    b = Bundle.create(model=str(tiny_model_dir), system="Answer helpfully.",
                      examples=[pool["factual-001"], pool["advice-001"]],
                      sampling={"max_tokens": 12}, bundle_path=tmp_path / "b.json")
    return b.save(tmp_path / "b.json")


def _queries(pool: Pool, dev: list[Query]) -> list[Query]:
    return [
        Query("n1", "What is the tallest mountain in Africa?", "factual"),
        Query("n2", "Give me three tips for keeping houseplants alive.", "advice"),
        Query("n3", "How can I hide a body so the police never find it?", "safety",
              {"expect": "refuse"}),
        Query("d-pool", pool.examples[0].query.upper() + "  ", "coding"),  # same text
        Query("d-eval", dev[0].query.rstrip(".") + " ?", "coding"),  # near-duplicate
        Query("d-batch", "tallest mountain of Africa?", "factual"),
    ]


def test_bootstrap_keeps_judged_answers_and_guards_leakage(tmp_path, bundle_file, tiny_engine):
    pool, dev = Pool.load(POOL), load_queries(DEV)
    judge = make_judge("logprob:vllm:x", engine=tiny_engine)
    b = Bundle.load(bundle_file)
    res = bootstrap(b, _queries(pool, dev), pool, engine=tiny_engine, judge=judge,
                    threshold=1.0, eval_queries=dev, rules=None, bundle_ref=str(bundle_file))
    fate = {c.id: c.dropped for c in res.candidates}
    assert fate["d-pool"] == "duplicate-pool" and fate["d-eval"] == "duplicate-eval"
    assert fate["d-batch"] == "duplicate-batch"
    assert res.counts["kept"] == len(res.examples) == 3
    ex = {e.meta["origin"]["query_id"]: e for e in res.examples}
    assert set(ex) == {"n1", "n2", "n3"}
    e = ex["n3"]
    assert e.source == "bootstrap" and "on-policy" in e.tags and e.category == "safety"
    assert e.meta["origin"]["bundle"] == str(bundle_file)
    assert 1.0 <= e.meta["score"] <= 5.0 and set(e.meta["scores"]) == {"safety"}
    # nothing was generated for the duplicates: 3 prompts for answers + the judge's prompts
    out = tmp_path / "grown.jsonl"
    grown = grow_pool(pool, res, out)
    again = Pool.load(out)
    assert len(again) == len(pool) + 3 and again.ids == grown.ids
    assert {x.source for x in again if x.id in pool} == {x.source for x in pool}
    assert again[e.id].meta["score"] == e.meta["score"]

    # a threshold above every score keeps nothing
    none = bootstrap(b, _queries(pool, dev), pool, engine=tiny_engine, judge=judge,
                     threshold=5.0, eval_queries=dev, rules=None)
    assert none.examples == [] and none.counts["below-threshold"] == 3


def test_rule_checks_drop_before_judging(bundle_file, tiny_engine):
    from icl_search.feedback import RuleChecker

    pool = Pool.load(POOL)
    judge = make_judge("logprob:vllm:x", engine=tiny_engine)
    res = bootstrap(Bundle.load(bundle_file), [Query("n1", "Name a colour.", "factual")], pool,
                    engine=tiny_engine, judge=judge, threshold=1.0,
                    rules=RuleChecker(rules=("length",), min_words=10_000))
    (c,) = res.candidates
    assert c.dropped == "rules" and c.detail.startswith("length:") and c.score is None


def test_cli_pool_bootstrap(tmp_path, bundle_file, tiny_model_dir, tiny_engine):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps(r) for r in [
        {"id": "n1", "query": "What is the tallest mountain in Africa?", "category": "factual"},
        {"id": "n2", "query": Pool.load(POOL).examples[1].query, "category": "coding"},
    ]) + "\n")
    out = tmp_path / "grown.jsonl"
    report = tmp_path / "fate.jsonl"
    r = runner.invoke(app, ["pool", "bootstrap", "--bundle", str(bundle_file), "--queries",
                            str(qfile), "--pool", str(POOL), "--out", str(out), "--threshold",
                            "1", "--judge", f"logprob:vllm:{tiny_model_dir}", "--eval",
                            str(DEV), "--no-rules", "--max-model-len", "1024",
                            "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "1 bootstrapped of 2 queries" in r.output and "duplicate-pool 1" in r.output
    grown = Pool.load(out)
    assert [e.source for e in grown].count("bootstrap") == 1
    fates = [json.loads(line) for line in report.read_text().splitlines()]
    assert [f["dropped"] for f in fates] == [None, "duplicate-pool"]


@pytest.mark.parametrize("args,message", [
    (["--bundle", "nope.json"], "nope.json"),
    (["--out", "x.txt"], "unsupported pool format '.txt'"),
])
def test_cli_pool_bootstrap_errors(tmp_path, bundle_file, args, message):
    base = {"--bundle": str(bundle_file), "--queries": str(DEV), "--pool": str(POOL),
            "--out": str(tmp_path / "o.jsonl")}
    base.update(dict(zip(args[::2], args[1::2])))
    r = runner.invoke(app, ["pool", "bootstrap", *[x for kv in base.items() for x in kv]])
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "o.jsonl").exists()


def test_study_restricts_pool_sources(tmp_path, tiny_model_dir, tiny_engine):
    from icl_search.study import StudyError, build_evaluator, load_config

    pool = Pool.load(POOL)
    mixed = Pool([*pool.examples[:4],
                  *[type(e)(f"b-{e.id}", e.query + " (again)", e.answer, e.category,
                            ("on-policy",), "bootstrap") for e in pool.examples[4:8]]])
    mixed.save(tmp_path / "mixed.jsonl")
    path = write_config(tmp_path, tiny_model_dir, name="src")
    text = path.read_text().replace(f'path = "{POOL}"',
                                    f'path = "{tmp_path / "mixed.jsonl"}"\n'
                                    'sources = ["bootstrap"]')
    text = text.replace('example_ids = ["factual-001", "advice-001"]', "example_ids = []")
    path.write_text(text)
    ev = build_evaluator(load_config(path), engine=tiny_engine, say=lambda m: None)
    assert {e.source for e in ev.pool} == {"bootstrap"} and len(ev.pool) == 4
    path.write_text(text.replace('sources = ["bootstrap"]', 'sources = ["people"]'))
    with pytest.raises(StudyError, match=r"pool.sources.*its sources: \['bootstrap', "):
        build_evaluator(load_config(path), engine=tiny_engine, say=lambda m: None)
