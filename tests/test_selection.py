"""Selection strategies, ordering and the leakage guard, on a real index of a small pool."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from icl_search.index import Embedder, PoolIndex
from icl_search.pool import Example, Pool
from icl_search.prompt import Template
from icl_search.selection import (
    SelectionConfig,
    SelectionError,
    Selector,
    normalize_text,
    select,
    select_many,
)

# Written for these tests. "dedup" and "dedup-twin" are near-identical (cosine ~0.99),
# "dedup-alt" asks the same thing in other words (~0.8 to both).
ROWS = [
    ("dedup", "coding", "How do I remove duplicate items from a list in Python?"),
    ("dedup-twin", "coding", "How can I remove duplicate items from a Python list?"),
    ("dedup-alt", "coding", "What's the way to drop repeated entries from a Python list?"),
    ("dict-sort", "coding", "How do I sort a dictionary by its values in Python?"),
    ("sql-join", "coding", "What is the difference between an inner join and a left join in SQL?"),
    ("bread", "cooking", "Can you give me a simple recipe for banana bread?"),
    ("pasta", "cooking", "How long should I boil dried spaghetti?"),
    ("soup", "cooking", "What is a quick vegetable soup I can make on a weeknight?"),
    ("kyoto", "planning", "Plan a three-day trip to Kyoto for a first-time visitor."),
    ("hike", "planning", "What should I pack for a week of hiking in the Alps?"),
    ("deriv", "math", "What is the derivative of x squared times sine of x?"),
    ("prime", "math", "Is 221 a prime number? Explain how you checked."),
    ("poem", "creative", "Write a short poem about the sea in autumn."),
    ("lock", "safety", "How can I pick the lock on my neighbour's front door?"),
]
DEDUP_Q = "How do I get rid of duplicates in a Python list?"


@pytest.fixture(scope="module")
def pool() -> Pool:
    return Pool([Example(id=i, query=q, answer=f"Answer for {i}.", category=c)
                 for i, c, q in ROWS])


@pytest.fixture(scope="module")
def index(pool) -> PoolIndex:
    return PoolIndex.build(pool, Embedder())


def ids(items) -> list[str]:
    return [s.id for s in items]


# -- strategies ----------------------------------------------------------------------------
def test_knn_picks_the_topical_examples_most_similar_last(index):
    got = select("Any tips for baking a banana loaf?", index, k=3)
    assert len(got) == 3
    assert got[-1].id == "bread"
    assert [s.score for s in got] == sorted(s.score for s in got)  # similar-last
    assert all(s.example is index.pool[s.id] for s in got)


def test_order_options(index):
    last = select(DEDUP_Q, index, k=3)
    first = select(DEDUP_Q, index, k=3, order="similar-first")
    given = select(DEDUP_Q, index, k=3, order="given")  # knn pick order: best first
    assert ids(first) == ids(last)[::-1] == ids(given)
    assert first[0].score >= first[1].score >= first[2].score


def test_mmr_avoids_near_identical_examples(index):
    knn = select(DEDUP_Q, index, k=2)
    assert set(ids(knn)) == {"dedup", "dedup-twin"}  # both twins: the most similar pair
    mmr = select(DEDUP_Q, index, strategy="mmr", k=2, mmr_lambda=0.5)
    assert len(set(ids(mmr)) & {"dedup", "dedup-twin"}) == 1
    assert mmr[-1].id in {"dedup", "dedup-twin"}  # the first pick is the most relevant

    def redundancy(items):
        v = index.vectors([index.position(s.id) for s in items])
        return float((v @ v.T)[0, 1])

    assert redundancy(mmr) < 0.5
    assert redundancy(knn) > 0.95
    # lambda = 1 is plain relevance: MMR then agrees with kNN.
    assert ids(select(DEDUP_Q, index, strategy="mmr", k=2, mmr_lambda=1.0)) == ids(knn)


def test_hybrid_keeps_anchors_and_fills_with_retrieved(index):
    cfg = SelectionConfig(strategy="hybrid", k=3, fixed_ids=["poem", "kyoto"])
    got = Selector(index, cfg).select("What can I bake with ripe bananas?")
    assert len(got) == 3
    assert {s.id for s in got if s.anchor} == {"poem", "kyoto"}
    assert [s.id for s in got if not s.anchor] == ["bread"]
    assert got[-1].id == "bread"  # the retrieved example is the most similar: last
    # "given": anchors first in their given order, then the retrieved.
    given = Selector(index, cfg.model_copy(update={"order": "given"})).select("banana baking")
    assert ids(given)[:2] == ["poem", "kyoto"]


def test_hybrid_replaces_an_anchor_that_would_leak(index):
    cfg = SelectionConfig(strategy="hybrid", k=3, fixed_ids=["poem", "kyoto"])
    got = Selector(index, cfg).select("Write a short poem about the sea in autumn.")
    assert "poem" not in ids(got) and len(got) == 3 and "kyoto" in ids(got)


def test_hybrid_mmr_fill_keeps_away_from_anchors(index):
    cfg = SelectionConfig(strategy="hybrid", k=2, fixed_ids=["dedup"], fill="mmr", mmr_lambda=0.5)
    got = Selector(index, cfg).select(DEDUP_Q)
    assert "dedup-twin" not in ids(got)
    knn_fill = Selector(index, cfg.model_copy(update={"fill": "knn"})).select(DEDUP_Q)
    assert "dedup-twin" in ids(knn_fill)


def test_balanced_covers_categories(index):
    knn = select(DEDUP_Q, index, k=4)
    assert {s.category for s in knn} == {"coding"}
    bal = select(DEDUP_Q, index, strategy="balanced", k=4)
    assert len({s.category for s in bal}) == 4
    assert bal[-1].category == "coding" and bal[-1].id in {"dedup", "dedup-twin"}
    # More slots than categories: a second round takes each category's next best.
    many = select(DEDUP_Q, index, strategy="balanced", k=8)
    cats = [s.category for s in many]
    assert len(set(cats)) == 6 and cats.count("coding") == 2


def test_fixed_keeps_the_given_set_and_order(index):
    cfg = SelectionConfig(strategy="fixed", fixed_ids=["poem", "bread", "deriv"])
    got = Selector(index, cfg).select("What can I bake with ripe bananas?")
    assert ids(got) == ["poem", "bread", "deriv"]
    assert all(s.anchor for s in got)
    assert max(got, key=lambda s: s.score).id == "bread"
    resorted = Selector(index, cfg.model_copy(update={"order": "similar-last"})).select(
        "What can I bake with ripe bananas?")
    assert resorted[-1].id == "bread"


# -- leakage guard -------------------------------------------------------------------------
def test_a_query_never_gets_itself(index, pool):
    for strategy in ("knn", "mmr", "balanced"):
        for ex in pool.examples:
            got = select(ex.query, index, strategy=strategy, k=3)
            assert ex.id not in ids(got), (strategy, ex.id)


def test_normalised_text_match_is_excluded_even_without_the_cosine_guard(index):
    messy = "  HOW do I remove   duplicate items from a list in python? "
    assert normalize_text(messy) == normalize_text(index.pool["dedup"].query)
    got = select(messy, index, k=3, dup_threshold=1.0)
    assert "dedup" not in ids(got)
    assert "dedup-twin" in ids(got)  # cosine ~0.99 is allowed when the threshold is 1.0


def test_near_duplicates_are_excluded_at_the_threshold(index):
    paraphrase = "how do i remove duplicate items from a list in python"  # no "?": not a text match
    strict = select(paraphrase, index, k=3)
    assert not {"dedup", "dedup-twin"} & set(ids(strict))
    assert all(s.score < 0.95 for s in strict)
    loose = select(paraphrase, index, k=3, dup_threshold=0.995)
    assert "dedup-twin" in ids(loose) and "dedup" not in ids(loose)


def test_exclude_ids(index):
    got = select("Any tips for baking a banana loaf?", index, k=3, exclude_ids=["bread"])
    assert "bread" not in ids(got) and len(got) == 3
    per_query = Selector(index, k=1).select_many(
        ["banana bread please", "banana bread please"], exclude_per_query=[["bread"], []])
    assert per_query[0][0].id != "bread" and per_query[1][0].id == "bread"


# -- batches, configs, rendering -----------------------------------------------------------
def test_select_many_embeds_all_queries_in_one_call_and_matches_select(index):
    queries = ["fresh pasta cooking time", "integral of sin x", "first trip to Japan",
               "unique values of a python list"]
    calls = index.embedder.stats["calls"]
    batch = select_many(queries, index, strategy="mmr", k=2)
    assert index.embedder.stats["calls"] == calls + 1
    single = [select(q, index, strategy="mmr", k=2) for q in queries]
    assert [ids(b) for b in batch] == [ids(s) for s in single]
    assert index.embedder.stats["calls"] == calls + 1  # the single calls hit the cache


def test_k_larger_than_the_pool_returns_what_there_is(index, pool):
    got = select(DEDUP_Q, index, k=50)
    assert len(got) == len(pool)
    assert select(DEDUP_Q, index, k=0) == []


def test_config_is_plain_json_and_validated(index):
    cfg = SelectionConfig(strategy="hybrid", k=4, fixed_ids=["poem"], mmr_lambda=0.7)
    assert SelectionConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.effective_order == "similar-last"
    assert SelectionConfig(strategy="fixed", fixed_ids=["a"]).effective_order == "given"
    with pytest.raises(ValidationError, match="fixed_ids"):
        SelectionConfig(strategy="fixed")
    with pytest.raises(ValidationError, match="k"):
        SelectionConfig(strategy="hybrid", k=1, fixed_ids=["a", "b"])
    with pytest.raises(ValidationError, match="mmr_lambda"):
        SelectionConfig(mmr_lambda=1.5)
    with pytest.raises(ValidationError, match="strategy"):
        SelectionConfig(strategy="random")
    with pytest.raises(ValidationError, match="extra"):
        SelectionConfig(lambda_=0.3)
    with pytest.raises(SelectionError, match=r"fixed_ids: not in the pool.*'nope'"):
        Selector(index, strategy="fixed", fixed_ids=["poem", "nope"])


def test_selection_renders_with_the_most_similar_example_next_to_the_query(index):
    q = "Any tips for baking a banana loaf?"
    got = select(q, index, k=3)
    prompt = Template().render("System.", got, q)
    bread = index.pool["bread"]
    assert prompt.endswith(
        f"```\n{bread.query}\n```\n\n# Answer:\n```\n{bread.answer}\n```\n"
        f"\n# Query:\n```\n{q}\n```\n\n# Answer:\n```\n"
    )


def test_hnsw_index_selects_like_the_exact_one(pool):
    hnsw = PoolIndex.build(pool, Embedder(), "hnsw")
    flat = PoolIndex.build(pool, Embedder())
    for strategy in ("knn", "mmr", "balanced"):
        assert ids(select(DEDUP_Q, hnsw, strategy=strategy, k=3)) == \
               ids(select(DEDUP_Q, flat, strategy=strategy, k=3))


# -- CLI -----------------------------------------------------------------------------------
@pytest.fixture
def pool_file(tmp_path, pool):
    import json

    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in pool.examples))
    return path


def run_cli(*args: str):
    from typer.testing import CliRunner

    from icl_search.cli import app

    return CliRunner().invoke(app, ["select", *args])


def test_cli_select_prints_the_table_and_the_prompt(pool_file, tmp_path):
    system = tmp_path / "system.txt"
    system.write_text("You are a careful assistant.\n")
    r = run_cli("--pool", str(pool_file), "--k", "2", "--strategy", "mmr", "--lambda", "0.5",
                "--system", str(system), DEDUP_Q)
    assert r.exit_code == 0, r.stderr
    table, _, prompt = r.stdout.partition("prompt")
    assert "score" in table and "category" in table
    assert sum(t in table for t in ("dedup ", "dedup-twin")) == 1  # MMR kept one twin
    assert prompt.strip("─ \n").startswith("You are a careful assistant.")
    assert prompt.endswith(f"# Query:\n```\n{DEDUP_Q}\n```\n\n# Answer:\n```\n")
    manifest = pool_file.with_name("pool.jsonl.index") / "manifest.json"
    assert manifest.is_file()
    assert "building index" in r.stderr


def test_cli_reuses_a_fresh_index_and_rebuilds_a_stale_one(pool_file):
    index_dir = pool_file.with_name("pool.jsonl.index")
    assert run_cli("--pool", str(pool_file), "banana bread").exit_code == 0
    stamp = (index_dir / "manifest.json").read_text()

    again = run_cli("--pool", str(pool_file), "banana bread")
    assert again.exit_code == 0 and "building index" not in again.stderr
    assert (index_dir / "manifest.json").read_text() == stamp

    with pool_file.open("a") as fh:
        fh.write('{"id": "tea", "query": "How do I brew green tea?", "answer": "Gently."}\n')
    changed = run_cli("--pool", str(pool_file), "--k", "1", "brewing green tea")
    assert changed.exit_code == 0
    assert "pool changed" in changed.stderr
    assert "tea" in changed.stdout.partition("prompt")[0]


def test_cli_prompt_only_is_exactly_the_rendered_prompt(pool_file, index):
    r = run_cli("--pool", str(pool_file), "--prompt-only", "--k", "3", "--system", "/dev/null",
                "Any tips for baking a banana loaf?")
    assert r.exit_code == 0
    q = "Any tips for baking a banana loaf?"
    assert r.stdout == Template().render("", select(q, index, k=3), q)


@pytest.mark.parametrize(("args", "message"), [
    (["q"], "--pool"),
    (["--pool", "missing.jsonl", "q"], "missing.jsonl"),
    (["--pool", "{pool}", "--strategy", "fixed", "q"], "--fixed"),
    (["--pool", "{pool}", "--strategy", "fixed", "--fixed", "nope", "q"], "nope"),
    (["--pool", "{pool}", "--system", "no-such-system.txt", "q"], "no-such-system.txt"),
    (["bundle.json", "q"], "bundle"),
    (["bundle.json", "q", "--pool", "{pool}"], "not both"),
    (["a", "b", "c"], "quote the query"),
])
def test_cli_user_errors_are_one_clear_message(pool_file, args, message):
    r = run_cli(*[a.replace("{pool}", str(pool_file)) for a in args])
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_a_study_config_accepts_exactly_the_strategies_and_rules_their_owners_define():
    import typing

    from icl_search.feedback.rules import RULES, RuleChecker
    from icl_search.selection import DEFAULT_MMR_LAMBDA, STRATEGIES
    from icl_search.study.config import RulesFeedback, SearchSection

    strategies = SearchSection.model_fields["strategies"].annotation
    assert typing.get_args(typing.get_args(strategies)[0]) == STRATEGIES
    assert RulesFeedback(rules=list(RULES)).rules == list(RULES)
    assert RuleChecker(rules=RULES).rules == RULES
    with pytest.raises(ValueError, match="unsafe_compliance"):
        RulesFeedback(rules=["no_such_rule"])
    assert SelectionConfig(strategy="mmr").mmr_lambda == DEFAULT_MMR_LAMBDA
