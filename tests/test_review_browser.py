"""The review page in a real browser: Debian's chromium, headless, driven by Playwright with
the system binary (no browser is downloaded). `make test` installs chromium and exports its
path as ICL_SEARCH_TEST_CHROMIUM; without one, these tests skip and say why."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from icl_search.review import ReviewFolder, make_review, read_verdicts, verdicts_path
from icl_search.review.web import create_app
from tests.helpers import serve_in_thread

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the browser tests need the playwright package")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCRIPT = "<script>window.__pwned = 1; document.title = 'pwned';</script>"


def chromium_path() -> str | None:
    path = os.environ.get("ICL_SEARCH_TEST_CHROMIUM") or shutil.which("chromium")
    return path if path and Path(path).exists() else None


@pytest.fixture(scope="module")
def browser_kind():
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium: install Debian's (apt-get install chromium) or set "
                    "ICL_SEARCH_TEST_CHROMIUM to a chromium binary")
    with playwright_api.sync_playwright() as p:
        yield p.chromium, path


@contextmanager
def browser(kind_path, profile: Path):
    """One person's browser: its own fresh profile folder."""
    kind, path = kind_path
    ctx = kind.launch_persistent_context(str(profile), executable_path=path, headless=True,
                                         args=FLAGS)
    try:
        yield ctx
    finally:
        ctx.close()


def rows(side: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        text = (f"**{side}** answer {i}\n\n```python\nprint({i})\n```" if side == "a"
                else f"{SCRIPT} plain {side} answer {i} <b>not bold</b>")
        out.append({"id": f"q{i}", "query": f"Question {i}: what is `x`?", "answer": text})
    return out


@pytest.fixture
def review(tmp_path) -> Path:
    out = tmp_path / "review"
    make_review({"a": rows("a", 8), "b": rows("b", 8)}, ["a:b"], out, readers=2, overlap=2)
    return out


def open_page(ctx, url: str, name: str):
    page = ctx.new_page()
    page.goto(url)
    page.fill("#rater", name)
    page.click("#go")
    page.wait_for_selector("#rating:not([hidden])")
    assert not page.is_visible("#start")  # the name form is gone: one pair, nothing else
    return page


def wait_progress(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('progress').textContent === t", arg=text)


def test_rate_with_keys_and_a_click_then_resume_after_closing(review, browser_kind, tmp_path):
    folder = ReviewFolder(review)
    with serve_in_thread(create_app(review)) as url:
        with browser(browser_kind, tmp_path / "profile") as ctx:
            page = open_page(ctx, url, "ana")
            wait_progress(page, "1 of 5")
            sheet = folder.sheets[1]
            first_query = folder.pairs[sheet[0]].query
            assert first_query.split(":")[0] in page.inner_text("#query")
            page.keyboard.press("1")
            wait_progress(page, "2 of 5")
            page.keyboard.press("2")
            wait_progress(page, "3 of 5")
            page.click("#pick-tie")
            wait_progress(page, "4 of 5")
        vs = read_verdicts(verdicts_path(review, "ana"))
        assert [(v.pair, v.verdict, v.sheet) for v in vs] == [
            (sheet[0], "X", 1), (sheet[1], "Y", 1), (sheet[2], "tie", 1)]
        # closed, reopened in a fresh browser: the same name resumes at the fourth pair
        with browser(browser_kind, tmp_path / "profile2") as ctx:
            page = open_page(ctx, url, "ana")
            wait_progress(page, "4 of 5")
            page.keyboard.press("3")
            wait_progress(page, "5 of 5")
            page.keyboard.press("1")
            page.wait_for_selector("#finished:not([hidden])")
            assert page.inner_text("#progress") == "5 of 5 rated"
    lines = (review / "verdicts-ana.jsonl").read_text().splitlines()
    assert [json.loads(x)["pair"] for x in lines] == sheet
    assert [json.loads(x)["verdict"] for x in lines] == ["X", "Y", "tie", "tie", "X"]


def test_model_output_is_shown_as_text_never_run(review, browser_kind, tmp_path):
    with serve_in_thread(create_app(review)) as url, \
            browser(browser_kind, tmp_path / "profile") as ctx:
        page = open_page(ctx, url, "eve")
        scripted = page.locator(".md", has_text="plain b answer")
        text = scripted.inner_text()
        assert SCRIPT in text and "<b>not bold</b>" in text  # shown as text
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.title() == "Blind review"
        assert page.locator(".md script").count() == 0 and page.locator(".md b").count() == 0
        # the other side's Markdown is rendered: bold and a code block
        assert page.locator(".md strong", has_text="a").count() == 1
        assert "print(" in page.locator(".md pre code").inner_text()
        # the key is never served, not even to the page's own origin
        assert page.request.get(f"{url}/key.json").status == 404
        page.keyboard.press("2")
        wait_progress(page, "2 of 5")
        assert page.evaluate("typeof window.__pwned") == "undefined"


def test_two_raters_at_once(review, browser_kind, tmp_path):
    folder = ReviewFolder(review)
    with serve_in_thread(create_app(review)) as url, \
            browser(browser_kind, tmp_path / "p1") as one, \
            browser(browser_kind, tmp_path / "p2") as two:
        ana = open_page(one, url, "ana")
        bob = open_page(two, url, "bob")
        for n in range(1, 6):  # turn by turn, each on their own sheet
            wait_progress(ana, f"{n} of 5")
            wait_progress(bob, f"{n} of 5")
            ana.keyboard.press("1")
            bob.keyboard.press("2")
        ana.wait_for_selector("#finished:not([hidden])")
        bob.wait_for_selector("#finished:not([hidden])")
    a = read_verdicts(verdicts_path(review, "ana"))
    b = read_verdicts(verdicts_path(review, "bob"))
    assert {v.sheet for v in a} != {v.sheet for v in b}  # the first free sheet each
    assert [v.pair for v in a] == folder.sheets[a[0].sheet]
    assert [v.pair for v in b] == folder.sheets[b[0].sheet]
    assert {v.verdict for v in a} == {"X"} and {v.verdict for v in b} == {"Y"}
