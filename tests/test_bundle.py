"""Bundles: round trip, rendering equal to the study's, retrieval with a real FAISS index and
embedder, refusal of a changed pool or a newer schema, and `icl-search select BUNDLE`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from icl_search.bundle import (
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    ContextWindowError,
)
from icl_search.cli import app
from icl_search.engines.base import SamplingParams
from icl_search.index import Embedder, PoolIndex
from icl_search.pool import Example, Pool, parse_urial
from icl_search.prompt import Budget, Template
from icl_search.redact import redact_url
from icl_search.selection import SelectionConfig, Selector

SYSTEM = "Below are conversations between a curious user and a careful, helpful assistant."

EXAMPLES = [
    Example("py-sort", "How do I sort a list of numbers in Python?",
            "Use `sorted(numbers)` for a new list, or `numbers.sort()` in place.", "coding"),
    Example("bread", "Can you give me a simple recipe for banana bread?",
            "Mash 3 ripe bananas, mix with 75 g melted butter, 150 g sugar, 1 egg and 190 g "
            "flour with a teaspoon of baking soda; bake 60 minutes at 175 C.", "cooking"),
    Example("kyoto", "Plan a three-day trip to Kyoto.",
            "Day 1: Higashiyama and Gion. Day 2: Arashiyama. Day 3: Fushimi Inari and Nishiki "
            "market.", "planning"),
    Example("deriv", "What is the derivative of x squared?", "It is 2x.", "math"),
    Example("poem", "Write a short poem about the sea in autumn.",
            "Grey water folds / the last warm light / into the tide.", "creative"),
    Example("sleep", "What habits help with falling asleep faster?",
            "Keep a fixed wake time, avoid screens an hour before bed, keep the room cool.",
            "advice"),
]


def fixed_bundle(**kw) -> Bundle:
    args = {
        "model": "gemma-3-270m", "system": SYSTEM, "examples": EXAMPLES[:3],
        "sampling": SamplingParams(max_tokens=64, temperature=0.3),
        "scores": {"overall": 4.1, "aspects": {"helpfulness": 4.3, "safety": 4.9},
                   "n_queries": 58, "judge": "openai:http://judge/v1#qwen", "coverage": 0.98},
        "provenance": {"study": "demo", "trial": 17,
                       "storage": "postgresql+psycopg://optuna:hunter2@db:5432/icl",
                       "config_hash": "c0ffee"},
    }
    args.update(kw)
    return Bundle.create(**args)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "data" / "pool.jsonl"
    Pool(EXAMPLES).save(path)
    return path


@pytest.fixture
def retrieval_bundle(tmp_path, pool_file, embedder) -> Bundle:
    """A kNN bundle saved in another folder than its pool, index built and saved by hand."""
    pool = Pool.load(pool_file)
    PoolIndex.build(pool, embedder).save(tmp_path / "data" / "pool.index")
    bundle = Bundle.create(
        model="gemma-3-270m", system=SYSTEM,
        selection=SelectionConfig(strategy="hybrid", k=3, fixed_ids=["kyoto"]),
        pool_path=pool_file, index_dir=tmp_path / "data" / "pool.index",
        sampling=SamplingParams(max_tokens=64),
    )
    bundle.save(tmp_path / "bundles" / "best.json")
    return Bundle.load(tmp_path / "bundles" / "best.json")


# -- fixed bundles ---------------------------------------------------------------------------
def test_fixed_round_trip_renders_exactly_what_the_study_rendered(tmp_path):
    path = fixed_bundle().save(tmp_path / "best.json")
    loaded = Bundle.load(path)
    query = "How do I reverse a string in Python?"
    assert loaded.render(query) == Template().render(SYSTEM, EXAMPLES[:3], query)
    assert [s.id for s in loaded.select(query)] == ["py-sort", "bread", "kyoto"]
    assert loaded.mode == "fixed" and loaded.model == "gemma-3-270m"
    assert loaded.sampling == SamplingParams(max_tokens=64, temperature=0.3)
    assert loaded.scores.aspects == {"helpfulness": 4.3, "safety": 4.9}
    assert loaded.scores.coverage == 0.98 and loaded.scores.n_queries == 58
    # Saving what was loaded writes the same file.
    loaded.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(path.read_text())


def test_file_holds_what_the_issue_lists_and_no_credentials(tmp_path):
    data = json.loads(fixed_bundle().save(tmp_path / "b.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["template"] == Template().to_dict()
    assert data["examples"][0] == {"id": "py-sort", "query": EXAMPLES[0].query,
                                   "answer": EXAMPLES[0].answer, "category": "coding"}
    assert "retrieval" not in data
    prov = data["provenance"]
    assert prov["storage"] == "postgresql+psycopg://db:5432/icl"
    assert "hunter2" not in (tmp_path / "b.json").read_text()
    assert (prov["study"], prov["trial"], prov["config_hash"]) == ("demo", 17, "c0ffee")
    assert set(prov["versions"]) == {"icl-search", "vllm", "optuna", "torch"}
    assert prov["versions"]["icl-search"] and prov["created"]


def test_render_with_a_budget_is_the_studys_fit(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    count = lambda text: len(tok.encode(text))
    bundle = fixed_bundle()
    query = "Plan a weekend in Lisbon."
    full = count(bundle.render(query))
    # A window that fits the prompt without its first example.
    budget = Budget(count, full + 64 - 10)
    expected = budget.fit(Template(), SYSTEM, EXAMPLES[:3], query, 64)
    assert expected.ok and [e.id for e in expected.dropped] == ["py-sort"]
    assert bundle.render(query, budget=budget) == expected.prompt
    with pytest.raises(ContextWindowError, match="exceeds the context window"):
        bundle.render(query, budget=Budget(count, 64 + 20))


def test_to_urial_writes_a_prompt_file_the_urial_parser_reads_back():
    bundle = fixed_bundle()
    text = bundle.to_urial()
    assert text == Template().render_context(SYSTEM, EXAMPLES[:3])
    doc = parse_urial(text)
    assert doc.system.strip() == SYSTEM
    assert [(e.query, e.answer) for e in doc.examples] == \
           [(e.query, e.answer) for e in EXAMPLES[:3]]
    # URIAL's own assembly (file + query block) is the bundle's prompt.
    q = "Why is the sky blue?"
    assert text + f"\n# Query:\n```\n{q}\n```\n" + "\n# Answer:\n```\n" == bundle.render(q)


# -- retrieval bundles -----------------------------------------------------------------------
def test_retrieval_bundle_selects_like_the_selector_and_renders_it(retrieval_bundle, pool_file,
                                                                   embedder, tmp_path):
    data = json.loads((tmp_path / "bundles" / "best.json").read_text())
    r = data["retrieval"]
    assert (r["pool"], r["index"]) == ("../data/pool.jsonl", "../data/pool.index")
    assert r["pool_fingerprint"] == Pool.load(pool_file).fingerprint
    assert r["embedder"] == embedder.id and [a["id"] for a in r["anchors"]] == ["kyoto"]
    assert "examples" not in data

    query = "Any tips for a quick banana loaf?"
    pool = Pool.load(pool_file)
    selector = Selector(PoolIndex.build(pool, embedder),
                        SelectionConfig(strategy="hybrid", k=3, fixed_ids=["kyoto"]))
    direct = selector.select(query)
    chosen = retrieval_bundle.select(query)
    assert [s.id for s in chosen] == [s.id for s in direct]
    assert "bread" in [s.id for s in chosen] and "kyoto" in [s.id for s in chosen]
    assert chosen[-1].id == "bread"  # the most similar sits next to the query
    assert retrieval_bundle.render(query) == Template().render(SYSTEM, direct, query)


def test_moved_bundle_keeps_pointing_at_its_pool(retrieval_bundle, tmp_path):
    moved = retrieval_bundle.save(tmp_path / "elsewhere" / "deep" / "copy.json")
    data = json.loads(moved.read_text())
    assert data["retrieval"]["pool"] == "../../data/pool.jsonl"
    again = Bundle.load(moved)
    assert again.pool_path.resolve() == (tmp_path / "data" / "pool.jsonl").resolve()
    assert [s.id for s in again.select("banana bread")] == \
           [s.id for s in retrieval_bundle.select("banana bread")]


def test_changed_pool_is_refused_naming_the_file_and_both_fingerprints(retrieval_bundle,
                                                                       pool_file):
    before = Pool.load(pool_file).fingerprint
    changed = [e if e.id != "bread" else Example("bread", e.query, "Buy it.", e.category)
               for e in EXAMPLES]
    Pool(changed).save(pool_file)
    after = Pool.load(pool_file).fingerprint
    bundle = Bundle.load(retrieval_bundle.path)  # loading needs no pool: it still works
    assert bundle.mode == "retrieval"
    with pytest.raises(BundleError) as info:
        bundle.select("banana bread")
    msg = str(info.value)
    assert str(pool_file) in msg and before in msg and after in msg and "changed" in msg
    with pytest.raises(BundleError, match="changed"):
        bundle.render("banana bread")


def test_fixed_strategy_in_given_order_exports_as_a_fixed_bundle(pool_file, tmp_path):
    bundle = Bundle.create(model="m", system=SYSTEM, pool_path=pool_file,
                           selection={"strategy": "fixed", "fixed_ids": ["poem", "deriv"]})
    assert bundle.mode == "fixed" and [e.id for e in bundle.examples] == ["poem", "deriv"]
    pool_file.unlink()  # a fixed bundle needs no pool
    path = bundle.save(tmp_path / "f.json")
    assert Bundle.load(path).render("q") == Template().render(SYSTEM, [EXAMPLES[4], EXAMPLES[3]],
                                                              "q")
    assert all(math.isnan(s.score) for s in Bundle.load(path).select("q"))


def test_create_refuses_ambiguous_or_wrong_input(pool_file):
    with pytest.raises(BundleError, match="exactly one of examples= .* or selection="):
        Bundle.create(model="m", system="", examples=EXAMPLES, selection={"strategy": "knn"},
                      pool_path=pool_file)
    with pytest.raises(BundleError, match="needs pool_path="):
        Bundle.create(model="m", system="", selection={"strategy": "knn"})
    with pytest.raises(BundleError, match=r"fixed_ids: not in the pool .*\['nope'\]"):
        Bundle.create(model="m", system="", pool_path=pool_file,
                      selection={"strategy": "hybrid", "k": 2, "fixed_ids": ["nope"]})
    with pytest.raises(BundleError, match="to_urial: a retrieval bundle"):
        Bundle.create(model="m", system="", pool_path=pool_file,
                      selection={"strategy": "knn"}).to_urial()


# -- loading errors ------------------------------------------------------------------------
def _write(tmp_path, data) -> str:
    path = tmp_path / "b.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_newer_schema_is_refused(tmp_path):
    data = fixed_bundle().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    data["something_new"] = {"x": 1}
    path = _write(tmp_path, data)
    with pytest.raises(BundleError, match=rf"{path}: schema_version 2 is newer than this "
                                          r"icl-search reads \(1\); upgrade"):
        Bundle.load(path)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("schema_version"), "schema_version: missing"),
    (lambda d: d.update(schema_version="1"), "schema_version: expected an integer"),
    (lambda d: d.update(sytem="typo"), "sytem: Extra inputs are not permitted"),
    (lambda d: d["sampling"].update(temperature=9), "sampling: .*temperature=9 is out of range"),
    (lambda d: d["template"].update(markers="x"), r"template: .*unknown field\(s\) \['markers'\]"),
    (lambda d: d.update(mode="retrieval"), "retrieval: a retrieval bundle needs"),
    (lambda d: d["examples"][0].pop("answer"), r"examples\.0\.answer: Field required"),
])
def test_invalid_bundle_names_the_file_and_field(tmp_path, mutate, match):
    data = fixed_bundle().to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(BundleError, match=match) as info:
        Bundle.load(path)
    assert str(info.value).startswith(path)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(BundleError, match=r"b\.json:1:2: not valid JSON"):
        Bundle.load(_write(tmp_path, "{oops"))
    with pytest.raises(BundleError, match="a bundle is a JSON object"):
        Bundle.load(_write(tmp_path, "[1]"))
    with pytest.raises(BundleError, match="no such bundle file"):
        Bundle.load(tmp_path / "missing.json")


@pytest.mark.parametrize("url, expected", [
    ("postgresql://user:p%40ss@db.example:5432/studies", "postgresql://db.example:5432/studies"),
    ("postgresql://user:p@ss@db:5432/s", "postgresql://db:5432/s"),  # an unescaped '@'
    ("postgresql://db/s?user=u&password=pw&sslmode=require", "postgresql://db/s?user=u&sslmode=require"),
    ("mysql+pymysql://root@localhost/optuna", "mysql+pymysql://localhost/optuna"),
    ("sqlite:///studies/demo.db", "sqlite:///studies/demo.db"),
    (None, None),
])
def test_redact_url_strips_credentials(url, expected):
    assert redact_url(url) == expected


# -- CLI -------------------------------------------------------------------------------------
runner = CliRunner()


def test_select_cli_prints_examples_and_prompt(retrieval_bundle, tmp_path):
    query = "Any tips for a quick banana loaf?"
    res = runner.invoke(app, ["select", str(retrieval_bundle.path), query])
    assert res.exit_code == 0, res.output
    assert "bread" in res.output and "kyoto *" in res.output and "hybrid, k=3" in res.output
    assert res.output.endswith(retrieval_bundle.render(query))

    only = runner.invoke(app, ["select", str(retrieval_bundle.path), query, "--prompt-only"])
    assert only.exit_code == 0 and only.output == retrieval_bundle.render(query)

    fixed = fixed_bundle().save(tmp_path / "fixed.json")
    res = runner.invoke(app, ["select", str(fixed), "Why is the sky blue?"])
    assert res.exit_code == 0 and "fixed set: 3 examples" in res.output
    assert res.output.endswith(Bundle.load(fixed).render("Why is the sky blue?"))


def test_select_cli_errors_are_one_clear_message(retrieval_bundle, pool_file, tmp_path):
    res = runner.invoke(app, ["select", str(retrieval_bundle.path), "q", "--k", "5"])
    assert res.exit_code == 2 and "--k: the bundle" in res.output and "--pool only" in res.output

    Pool(EXAMPLES[:-1]).save(pool_file)
    res = runner.invoke(app, ["select", str(retrieval_bundle.path), "banana bread"])
    assert res.exit_code == 2
    assert "the pool changed since" in " ".join(res.output.split())
    assert "Traceback" not in res.output

    bad = _write(tmp_path, {"schema_version": 7})
    res = runner.invoke(app, ["select", bad, "q"])
    assert res.exit_code == 2 and "schema_version 7 is newer" in " ".join(res.output.split())


# -- portable bundle folders -----------------------------------------------------------------
def test_a_copied_bundle_folder_answers_select_from_another_directory(retrieval_bundle,
                                                                      tmp_path, monkeypatch):
    import os
    import shutil

    from icl_search.bundle import copy_beside

    query = "Any tips for a quick banana loaf?"
    expected = retrieval_bundle.render(query)
    copy_beside(retrieval_bundle, tmp_path / "portable" / "best.json")
    data = json.loads((tmp_path / "portable" / "best.json").read_text())
    assert data["retrieval"]["pool"] == "pool.jsonl"
    assert data["retrieval"]["index"] == "pool.jsonl.index"
    assert (tmp_path / "portable" / "pool.jsonl.index").is_dir()

    # the folder alone travels: the original pool, index and bundle are gone
    far = shutil.copytree(tmp_path / "portable", tmp_path / "far" / "away")
    for gone in ("portable", "data", "bundles"):
        shutil.rmtree(tmp_path / gone)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    rel = os.path.relpath(far / "best.json", elsewhere)
    res = runner.invoke(app, ["select", rel, query])
    assert res.exit_code == 0, res.output
    assert res.output.endswith(expected)

    # one folder holds one pool: another pool of the same name is never overwritten
    other_pool = tmp_path / "other" / "pool.jsonl"
    Pool(EXAMPLES[:3]).save(other_pool)
    other = Bundle.create(model="m", system=SYSTEM, pool_path=other_pool,
                          selection=SelectionConfig(strategy="knn", k=2))
    with pytest.raises(BundleError, match="holds another pool"):
        copy_beside(other, far / "other.json")
    assert not (far / "other.json").exists()

    # the index is a cache of the pool: without it the bundle rebuilds the same one
    shutil.rmtree(far / "pool.jsonl.index")
    res = runner.invoke(app, ["select", rel, query, "--prompt-only"])
    assert res.exit_code == 0, res.output
    assert res.output == expected


def test_a_bundle_without_its_pool_fails_before_any_model_loads(retrieval_bundle, tmp_path):
    import shutil

    alone = tmp_path / "alone" / "deeper" / "best.json"  # `../data/pool.jsonl` is not there
    alone.parent.mkdir(parents=True)
    shutil.copy(retrieval_bundle.path, alone)  # copied without its pool
    res = runner.invoke(app, ["select", str(alone), "banana bread"])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "retrieval.pool" in msg and "does not exist" in msg and "--copy-pool" in msg

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q1", "query": "banana bread"}) + "\n")
    # a model that does not exist: had it been loaded first, the error would name the model
    res = runner.invoke(app, ["generate", str(queries), "--out", str(tmp_path / "a.jsonl"),
                              "--bundle", str(alone), "--model", str(tmp_path / "no-model")])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "retrieval.pool" in msg and "no-model" not in msg
    assert not (tmp_path / "a.jsonl").exists()
