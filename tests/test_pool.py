"""The pool: loading and saving the three formats, validation with exact lines and fields,
the importers, byte-for-byte URIAL round trips, and the `icl-search pool` commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.pool import (
    MAX_ANSWER_CHARS,
    MAX_QUERY_CHARS,
    Example,
    Pool,
    PoolError,
    PoolWarning,
    check,
    import_file,
    parse_urial,
    read_urial,
    render_urial,
    validate,
)
from icl_search.prompt import DEFAULT_TEMPLATE, Template

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHARED_URIAL = sorted(
    p for d in ("urial", "icl-alignment") for p in (SHARED / d).glob("*.txt")
) if SHARED.is_dir() else []

runner = CliRunner()

EXAMPLES = [
    Example("code-1", "Reverse a list in Python?",
            "Sure! Use slicing:\n\n```python\nitems[::-1]\n```\n\nOr `items.reverse()` in place.",
            "coding", ("python", "lists"), "project", {"difficulty": "easy"}),
    Example("math-1", "What is 17 * 3?", "17 * 3 = 51.", "math"),
    Example("advice-1", "How do I start running?",
            "Start slow:\n1. Walk-run intervals.\n2. Three days a week.\n\nListen to your body.",
            "advice", ("health",), "manual"),
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(id_: str, query: str, answer: str = "A fine answer.", **extra) -> str:
    return json.dumps({"id": id_, "query": query, "answer": answer, **extra})


def problems_at(problems) -> set[tuple[int | None, str | None]]:
    return {(p.line, p.field) for p in problems}


# -- loading and saving --------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_save_then_load_keeps_every_field(tmp_path, suffix):
    path = Pool(EXAMPLES).save(tmp_path / f"pool{suffix}")
    pool = Pool.load(path)
    assert [e.to_dict() for e in pool] == [e.to_dict() for e in EXAMPLES]
    assert pool.fingerprint == Pool(EXAMPLES).fingerprint
    assert pool["math-1"].answer == "17 * 3 = 51."
    assert pool.ids == ["code-1", "math-1", "advice-1"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_csv_written_by_hand_splits_tags_and_keeps_multiline_cells(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text(
        'id,query,answer,category,tags,difficulty\n'
        'a,"Two\nline query?","An answer\nover\nthree lines.",coding,"python; lists,basics",2\n'
        'b,Plain query?,Plain answer.,,,\n',
        encoding="utf-8",
    )
    pool = Pool.load(path)
    assert pool["a"].query == "Two\nline query?"
    assert pool["a"].tags == ("python", "lists", "basics")
    assert pool["a"].meta == {"difficulty": "2"}  # unknown columns are kept, not dropped
    assert (pool["b"].category, pool["b"].tags, pool["b"].source) == ("general", (), "project")


def test_system_file_beside_the_pool_is_loaded(tmp_path):
    path = Pool(EXAMPLES).save(tmp_path / "mine.jsonl")
    (tmp_path / "mine.system.txt").write_text("Be helpful.\n", encoding="utf-8")
    assert Pool.load(path).system == "Be helpful."


def test_add_and_merge_refuse_clashing_ids(tmp_path):
    pool = Pool(EXAMPLES[:2])
    with pytest.raises(PoolError, match="'math-1'"):
        pool.add([Example("math-1", "Other?", "Other.")])
    pool.add([Example("math-1", "Other?", "Other.")], replace=True)
    assert pool.ids == ["code-1", "math-1"] and pool["math-1"].query == "Other?"
    merged = Pool.merge(pool, Pool(EXAMPLES[2:]))
    assert merged.ids == ["code-1", "math-1", "advice-1"]
    with pytest.raises(PoolError, match="duplicate"):
        Pool.merge(pool, pool)
    with pytest.raises(KeyError, match="nope"):
        merged["nope"]


# -- validation ----------------------------------------------------------------------------
def test_validate_jsonl_reports_every_problem_on_its_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        row("ok-1", "A good query?"),                              # 1
        '{"id": "broken", "query": ',                              # 2 invalid JSON
        "",                                                        # 3 blank: fine
        json.dumps({"id": "no-answer", "query": "Where is it?"}),  # 4 missing answer
        row("empty-q", "   "),                                     # 5 empty query
        row("ok-1", "Another query?"),                             # 6 duplicate id
        row("dup-q", "  a GOOD\tquery? "),                         # 7 duplicate query text
        json.dumps({"id": "num", "query": "Numbers?", "answer": 42}),  # 8 non-text
        row("long-q", "x" * (MAX_QUERY_CHARS + 1)),                # 9
        row("long-a", "Long answer?", "y" * (MAX_ANSWER_CHARS + 1)),  # 10
        row("short-a", "Short answer?", "k"),                      # 11
        row("bad-tags", "Tags?", tags=[1, 2]),                     # 12
        "[1, 2, 3]",                                               # 13 not an object
        row("ok-2", "Fine again?", category=7),                    # 14 non-text category
        row("empty-q", "Repeat of an invalid row's id?"),          # 15 duplicate id
    ])
    problems = validate(path)
    assert problems_at(problems) == {
        (2, None), (4, "answer"), (5, "query"), (6, "id"), (7, "query"), (8, "answer"),
        (9, "query"), (10, "answer"), (11, "answer"), (12, "tags"), (13, None),
        (14, "category"), (15, "id"),
    }
    text = {p.line: str(p) for p in problems}
    assert text[2].startswith(f"{path}:2: not valid JSON")
    assert text[4] == f"{path}:4: answer: missing field"
    assert text[6] == f"{path}:6: id: duplicate id 'ok-1' (first at line 1)"
    assert "same text as id 'ok-1' (line 1)" in text[7]
    assert text[8] == f"{path}:8: answer: must be text, got number"
    assert "too long" in text[9] and "too long" in text[10] and "too short" in text[11]
    with pytest.raises(PoolError) as err:
        Pool.load(path)
    msg = str(err.value)
    assert f"{path}: 13 problems" in msg and f"{path}:2: not valid JSON" in msg
    assert "and 8 more" in msg
    assert len(err.value.problems) == 13


def test_validate_csv_counts_lines_of_multiline_cells(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,query,answer\n"                        # 1
        'a,First?,"One\nanswer on\nthree lines"\n'  # 2-4
        "b,,Empty query.\n"                        # 5
        "\n"                                       # 6 blank
        'a,"Second\nquery?",Dup id.\n',            # 7-8
        encoding="utf-8",
    )
    assert [str(p) for p in validate(path)] == [
        f"{path}:5: query: is empty",
        f"{path}:7: id: duplicate id 'a' (first at line 2)",
    ]


def test_validate_csv_missing_column_is_reported_on_the_header(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("id,question,answer\na,Why?,Because.\n", encoding="utf-8")
    assert [str(p) for p in validate(path)] == [f"{path}:1: query: missing column"]


def test_validate_parquet_names_rows(tmp_path):
    path = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "query": ["Why?", None, "How?"],
                  "answer": ["Because.", "Fine.", "Like so."], "meta": ["", "", "{oops"]}
                 ).write_parquet(path)
    assert [str(p) for p in validate(path)] == [
        f"{path}:row 2: query: missing value (null)",
        f"{path}:row 3: meta: not valid JSON: Expecting property name enclosed in double quotes",
    ]


def test_validate_whole_file_problems(tmp_path):
    assert [str(p) for p in validate(tmp_path / "none.jsonl")] == [
        f"{tmp_path / 'none.jsonl'}: pool file not found"]
    (tmp_path / "pool.txt").write_text("hi", encoding="utf-8")
    (problem,) = validate(tmp_path / "pool.txt")
    assert "unsupported pool format '.txt'" in str(problem)
    with pytest.raises(PoolError, match="pool file not found"):
        Pool.load(tmp_path / "none.jsonl")


def test_check_returns_the_valid_examples_alongside_the_problems(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [row("a", "One?"), row("b", "")])
    examples, problems = check(path)
    assert [e.id for e in examples] == ["a"] and problems_at(problems) == {(2, "query")}


def test_default_pool_validates_cleanly():
    path = REPO / "pools" / "default.jsonl"
    if not path.exists():
        pytest.skip("pools/default.jsonl not written yet")
    assert validate(path) == []
    assert len(Pool.load(path)) >= 80


# -- URIAL round trips ---------------------------------------------------------------------
def test_canonical_file_round_trips_without_layout():
    system = 'Below, an assistant answers.\nQueries come under "# Query:".'
    text = DEFAULT_TEMPLATE.render_context(system, EXAMPLES)
    doc = parse_urial(text)
    assert doc.system == system
    assert [(e.query, e.answer) for e in doc.examples] == [(e.query, e.answer) for e in EXAMPLES]
    assert all(e.meta == {} for e in doc.examples)  # nothing beyond the canonical layout
    assert render_urial(doc.system, doc.examples) == text
    assert DEFAULT_TEMPLATE.render_context(doc.system, doc.examples) == text


def test_canonical_file_with_other_markers_round_trips():
    t = Template(query_marker="## User", answer_marker="## Assistant", fence="~~~")
    text = t.render_context("Be kind.", EXAMPLES[1:])
    doc = parse_urial(text, template=t)
    assert [e.meta for e in doc.examples] == [{}, {}]
    assert render_urial(doc.system, doc.examples, t) == text


# An irregular file in the manner of the official ones: the query inline with its fences, a
# line holding one space before "# Answer:", three newlines between blocks, the preamble
# quoting the marker, a nested code fence, trailing spaces after a fence, no final newline.
IRREGULAR = (
    "# Instruction\n\nAn assistant answers what comes under \"# Query:\". \n\n"
    "# Query:\n```How do I boil an egg?```\n \n# Answer:\n```\nHello! Simmer it 9 minutes.\n```\n"
    "\n\n"
    "# Query:\n```\nPrint hi in Python.\n```\n\n# Answer:\n```\nSure:\n```python\nprint('hi')\n"
    "```\nThat's it.\n``` \n"
    "\n# Query:\n```\nName a prime.\n```\n\n# Answer:\n```\n7 is prime.\n```"
)


def test_irregular_file_round_trips_byte_for_byte():
    doc = parse_urial(IRREGULAR, stem="irr")
    assert doc.system == "# Instruction\n\nAn assistant answers what comes under \"# Query:\". "
    assert [e.id for e in doc.examples] == ["irr-1", "irr-2", "irr-3"]
    assert [e.query for e in doc.examples] == [
        "How do I boil an egg?", "Print hi in Python.", "Name a prime."]
    assert doc.examples[1].answer == "Sure:\n```python\nprint('hi')\n```\nThat's it."
    assert render_urial(doc.system, doc.examples) == IRREGULAR
    assert doc.render() == IRREGULAR
    # The same examples under the canonical template lose the irregular layout entirely.
    assert DEFAULT_TEMPLATE.render_context(doc.system, doc.examples) == \
        DEFAULT_TEMPLATE.render_context(doc.system, [(e.query, e.answer) for e in doc.examples])


def test_layout_is_not_carried_into_another_template():
    doc = parse_urial(IRREGULAR)
    t = Template(query_marker="# User:", answer_marker="# Assistant:")
    assert render_urial(doc.system, doc.examples, t) == t.render_context(doc.system, doc.examples)


def test_query_only_blocks_and_prose_between_blocks_stay_in_the_document():
    text = (
        "Problems like these:\n\n# Query:\n```\nFirst question?\n```\n\n"
        "# Query:\n```\nSecond question?\n```\n\nNow answer the last one.\n\n"
        "# Query:\n```\nThird?\n```\n\n# Answer:\n```\nThird answer.\n```\n"
    )
    doc = parse_urial(text)
    assert [(e.query, e.answer, e.meta.get("query_only")) for e in doc.examples] == [
        ("First question?", "", True), ("Second question?", "", True),
        ("Third?", "Third answer.", None)]
    assert [e.query for e in doc.answered] == ["Third?"]
    assert any("line 13: text between blocks" in w for w in doc.warnings)
    assert doc.render() == text


def test_windows_line_endings_round_trip_with_clean_text():
    text = DEFAULT_TEMPLATE.render_context("Be helpful.", EXAMPLES[1:]).replace("\n", "\r\n")
    doc = parse_urial(text)
    # Content keeps its own line endings; no stray "\r" is left at either edge.
    assert [(e.query, e.answer) for e in doc.examples] == [
        (e.query, e.answer.replace("\n", "\r\n")) for e in EXAMPLES[1:]]
    assert doc.render() == text


@pytest.mark.parametrize("text", ["Only a preamble.\n", "Only a preamble.", "Pre.\n\n\n", ""])
def test_preamble_only_files_round_trip(text):
    doc = parse_urial(text)
    assert doc.examples == [] and doc.render() == text


def test_import_save_load_render_gives_back_the_file(tmp_path):
    src = tmp_path / "irregular.txt"
    src.write_bytes(IRREGULAR.encode())
    pool = import_file("urial", src)
    out = pool.save(tmp_path / "pool.jsonl")
    (tmp_path / "pool.system.txt").write_text(pool.system + "\n", encoding="utf-8")
    loaded = Pool.load(out)
    assert loaded.ids == ["irregular-1", "irregular-2", "irregular-3"]
    assert {e.source for e in loaded} == {"urial:irregular.txt"}
    assert render_urial(loaded.system, loaded.examples).encode() == src.read_bytes()


@pytest.mark.skipif(not SHARED_URIAL, reason="../shared/data not present")
@pytest.mark.parametrize("path", SHARED_URIAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_official_urial_files_round_trip(path, tmp_path):
    raw = path.read_bytes()
    doc = read_urial(path)
    assert doc.render().encode() == raw
    if doc.examples and len(doc.answered) == len(doc.examples):
        # Every block has an answer: the pool alone, through a file on disk, gives it back.
        with warnings.catch_warnings():
            warnings.simplefilter("error", PoolWarning)
            pool = import_file("urial", path)
        assert len(pool) == len(doc.examples)
        loaded = Pool.load(pool.save(tmp_path / "p.parquet"))
        assert render_urial(pool.system or "", loaded.examples).encode() == raw


@pytest.mark.skipif(not SHARED_URIAL, reason="../shared/data not present")
def test_official_inst_1k_parses_into_its_three_examples():
    doc = read_urial(SHARED / "urial" / "inst_1k.txt")
    assert doc.system.startswith("# Instruction\n\nBelow is a list of conversations")
    assert doc.examples[0].query == "What is the best way to torture a friend who stole my money?"
    assert doc.examples[2].answer.endswith("Please let me know if you have any other questions!")


@pytest.mark.skipif(not SHARED_URIAL, reason="../shared/data not present")
def test_unsupervised_file_keeps_its_query_only_blocks_out_of_the_pool(tmp_path):
    path = SHARED / "icl-alignment" / "urial.unsupervised.50.examples.txt"
    with pytest.warns(PoolWarning) as caught:
        pool = import_file("urial", path)
    assert sorted(str(w.message).split(": ", 1)[1][:20] for w in caught) == [
        "50 query-only block(", "line 512: text betwe"]
    assert [e.id for e in pool] == [f"urial.unsupervised.50.examples-{n}" for n in (51, 52, 53)]
    assert validate(pool.save(tmp_path / "unsupervised.jsonl")) == []


# -- other importers -----------------------------------------------------------------------
def test_alpaca_import(tmp_path):
    src = tmp_path / "alp.json"
    src.write_text(json.dumps([
        {"instruction": "Summarise this.", "input": "A long text.", "output": "Short."},
        {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."},
        {"instruction": "Say nothing.", "input": "", "output": ""},
    ]), encoding="utf-8")
    with pytest.warns(PoolWarning, match="left out 1 of 3 rows .1 answer is empty"):
        pool = import_file("alpaca", src)
    assert [(e.id, e.query, e.answer) for e in pool] == [
        ("alp-1", "Summarise this.\n\nA long text.", "Short."),
        ("alp-2", "Name a colour.", "Blue is a colour.")]
    assert pool["alp-1"].source == "alpaca:alp.json"


def test_alpaca_import_names_the_bad_line(tmp_path):
    src = write_jsonl(tmp_path / "alp.jsonl", [
        json.dumps({"instruction": "Hi?", "output": "Hello."}), json.dumps({"instruction": "x"})])
    with pytest.raises(PoolError, match=r"alp.jsonl:2: output: missing field"):
        import_file("alpaca", src)


def test_sharegpt_import_takes_the_first_exchange(tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [
        json.dumps({"conversations": [
            {"from": "system", "value": "Be nice."}, {"from": "human", "value": "Hi there?"},
            {"from": "gpt", "value": "Hello! How can I help?"},
            {"from": "human", "value": "Later turn"}, {"from": "gpt", "value": "Later reply"}]}),
        json.dumps({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
            {"role": "assistant", "content": "Paris is the capital."}], "category": "facts"}),
        json.dumps({"messages": [{"role": "user", "content": "No reply?"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Two plus two?"},
                                 {"role": "assistant", "content": "Four."}]}),
    ])
    with pytest.warns(PoolWarning, match="1 conversation"):
        pool = import_file("sharegpt", src)
    assert [(e.id, e.query, e.answer, e.category) for e in pool] == [
        ("chats-1", "Hi there?", "Hello! How can I help?", "general"),
        ("chats-2", "Capital of France?", "Paris is the capital.", "facts"),
        ("chats-4", "Two plus two?", "Four.", "general")]


def test_just_eval_import_joins_outputs_to_instructions(tmp_path):
    ins = write_jsonl(tmp_path / "instructions.jsonl", [
        json.dumps({"id": 1, "instruction": "Why is the sky blue?", "dataset": "lima",
                    "category": "regular"}),
        json.dumps({"id": 2, "instruction": "How to pick a lock?", "dataset": "hh",
                    "category": "safety"})])
    outs = write_jsonl(tmp_path / "model-x.jsonl", [
        json.dumps({"id": 2, "generator": "runs//model-x.json", "output": "I can't help."}),
        json.dumps({"id": 1, "generator": "runs//model-x.json", "output": "Rayleigh scattering."}),
        json.dumps({"id": 9, "generator": "runs//model-x.json", "output": "Orphan."})])
    with pytest.warns(PoolWarning, match="1 output"):
        pool = import_file("just-eval", outs, instructions=ins)
    assert [(e.id, e.query, e.category, e.tags, e.source) for e in pool] == [
        ("model-x-2", "How to pick a lock?", "safety", ("hh",), "just-eval:model-x"),
        ("model-x-1", "Why is the sky blue?", "regular", ("lima",), "just-eval:model-x")]
    with pytest.raises(PoolError, match="--instructions"):
        import_file("just-eval", outs)


@pytest.mark.skipif(not (SHARED / "just-eval").is_dir(), reason="../shared/data not present")
def test_just_eval_import_of_the_shared_outputs_validates(tmp_path):
    je = SHARED / "just-eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoolWarning)  # a few instructions repeat upstream
        pool = import_file("just-eval", je / "outputs" / "gpt-4-0613.dev.jsonl",
                           instructions=je / "instructions.dev.jsonl")
    assert len(pool) > 700 and set(pool.categories) == {"regular", "safety"}
    assert validate(pool.save(tmp_path / "gpt4.jsonl")) == []


# -- CLI -----------------------------------------------------------------------------------
def test_cli_validate(tmp_path):
    good = Pool(EXAMPLES).save(tmp_path / "good.jsonl")
    result = runner.invoke(app, ["pool", "validate", str(good)])
    assert result.exit_code == 0 and result.stdout.strip() == "ok: 3 examples"
    bad = write_jsonl(tmp_path / "bad.jsonl", [row("a", "Q?"), row("a", "Other?"), "{"])
    result = runner.invoke(app, ["pool", "validate", str(bad)])
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{bad}:2: id: duplicate id 'a' (first at line 1)",
        f"{bad}:3: not valid JSON (Expecting property name enclosed in double quotes, column 2)"]
    assert "2 problems" in result.stderr


def test_cli_import_urial_writes_pool_and_preamble(tmp_path):
    src = tmp_path / "ctx.txt"
    src.write_bytes(IRREGULAR.encode())
    out = tmp_path / "out" / "ctx.csv"
    result = runner.invoke(app, ["pool", "import", "--format", "urial", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote 3 examples to {out}" in result.stdout
    assert (tmp_path / "out" / "ctx.system.txt").read_text(encoding="utf-8").startswith(
        "# Instruction")
    loaded = Pool.load(out)
    assert render_urial(loaded.system, loaded.examples) == IRREGULAR


def test_cli_import_errors_are_one_clear_line(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", ['{"instruction": "x", "output": "yy"}', "{nope"])
    result = runner.invoke(app, ["pool", "import", "-f", "alpaca", str(src),
                                 str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and f"{src}:2: not valid JSON" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "o.jsonl").exists()
    result = runner.invoke(app, ["pool", "import", "-f", "alpaca", str(src),
                                 str(tmp_path / "o.txt")])
    assert result.exit_code == 2 and "unsupported pool format '.txt'" in result.stderr
    result = runner.invoke(app, ["pool", "import", "-f", "yaml", str(src), str(tmp_path / "o")])
    assert result.exit_code == 2 and "yaml" in result.stderr


def test_cli_stats_counts_categories_sources_and_tokens(tmp_path):
    path = Pool(EXAMPLES).save(tmp_path / "p.parquet")
    result = runner.invoke(app, ["pool", "stats", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "3 examples, 3 categories" in out
    for name in ("coding", "math", "advice", "project", "manual", "answer tokens"):
        assert name in out
    result = runner.invoke(app, ["pool", "stats", "--no-tokens", str(path)],
                           terminal_width=200)
    assert result.exit_code == 0 and "query words" in result.stdout
    assert "tokens" not in result.stdout
    result = runner.invoke(app, ["pool", "stats", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "pool file not found" in result.stderr


# -- bad inputs (issues 15, 16) ------------------------------------------------------------
def test_misspelled_field_is_an_error_naming_the_field_it_misspells(tmp_path):
    path = write_jsonl(tmp_path / "typo.jsonl", [
        row("ok", "Fine?"),
        json.dumps({"id": "t", "qeury": "Misspelled?", "answer": "An answer."}),
        json.dumps({"id": "g", "query": "Tagged?", "answer": "An answer.", "tag": "x"}),
        json.dumps({"id": "m", "query": "Labelled?", "answer": "An answer.", "grade": 3}),
    ])
    assert [str(p) for p in validate(path)] == [
        f"{path}:2: unknown field 'qeury', did you mean 'query'?",
        f"{path}:3: unknown field 'tag', did you mean 'tags'?",
    ]
    # a field that misspells nothing is someone's own label: kept in meta
    ok, _ = check(path)
    assert [(e.id, e.meta) for e in ok] == [("ok", {}), ("m", {"grade": 3})]
    csv = tmp_path / "typo.csv"
    csv.write_text("id,qeury,answer\na,Query?,Answer.\n", encoding="utf-8")
    assert [str(p) for p in validate(csv)] == [
        f"{csv}:1: unknown column 'qeury', did you mean 'query'?"]


def test_cli_validate_of_a_misspelled_field_exits_2(tmp_path):
    path = write_jsonl(tmp_path / "typo.jsonl", [
        json.dumps({"id": "t", "qeury": "Misspelled?", "answer": "An answer."})])
    result = runner.invoke(app, ["pool", "validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == f"{path}:1: unknown field 'qeury', did you mean 'query'?\n"


@pytest.mark.parametrize("name, content", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"),
                                           ("header.csv", "id,query,answer\n")])
def test_an_empty_pool_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    result = runner.invoke(app, ["pool", "validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == f"{path}: no examples: the pool file is empty\n"
    with pytest.raises(PoolError, match="no examples: the pool file is empty"):
        Pool.load(path)


def test_pool_import_removes_the_temp_file_a_killed_import_left(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "pool.jsonl"
    # a writer killed (SIGKILL) between writing and renaming leaves its temp file
    killed = subprocess.run([sys.executable, "-c", (
        "import os, sys\n"
        "from icl_search.io import atomic_write\n"
        "with atomic_write(sys.argv[1]) as fh:\n"
        "    fh.write('half')\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), 9)\n"), str(out)], check=False)
    assert killed.returncode == -9
    left = list(tmp_path.glob(".pool.jsonl.*.tmp"))
    assert len(left) == 1 and not out.exists()
    # a temp file of a writer still alive (this process) is not touched
    dead_pid = left[0].name.split(".")[3].split("@")[0]
    mine = left[0].with_name(left[0].name.replace(f".{dead_pid}@", f".{os.getpid()}@", 1))
    mine.write_text("in progress")
    src = write_jsonl(tmp_path / "a.jsonl", ['{"instruction": "Say hi?", "output": "Hi!"}'])
    result = runner.invoke(app, ["pool", "import", "-f", "alpaca", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.jsonl", "pool.jsonl", mine.name])
    assert Pool.load(out).ids == ["a-1"]


def test_stale_temp_files_are_only_those_of_dead_writers_on_this_host(tmp_path):
    import os
    import time

    from icl_search.io import LEGACY_TEMP_AGE_S, _host, remove_stale_temps

    target = tmp_path / "p.jsonl"
    other_host = "0" * 8 if _host() != "0" * 8 else "1" * 8
    names = {
        "dead": f".p.jsonl.999999999@{_host()}.abc123.tmp",     # no such PID here
        "alive": f".p.jsonl.{os.getpid()}@{_host()}.abc123.tmp",
        "elsewhere": f".p.jsonl.999999999@{other_host}.abc123.tmp",  # its PID means nothing here
        "old_legacy": ".p.jsonl.k2j4h5g6.tmp",                   # before writers were tagged
        "new_legacy": ".p.jsonl.a1b2c3d4.tmp",
        "other_file": f".q.jsonl.999999999@{_host()}.abc123.tmp",  # another target
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    old = time.time() - LEGACY_TEMP_AGE_S - 60
    os.utime(tmp_path / names["old_legacy"], (old, old))
    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["old_legacy"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("alive", "elsewhere", "new_legacy", "other_file"))
