"""The rating page of `review serve`: a FastAPI app over one review folder.

A rater gives a name and gets a sheet (the first one nobody has taken, or the one they chose);
the page then shows one pair at a time, and each verdict is appended to
`verdicts-RATER.jsonl` before the next pair is sent, so closing the page loses nothing and the
same name resumes where it stopped. The verdict files are the only state.

Only the routes below exist: the folder is never mounted, so `key.json` (and every other
file in it) cannot be fetched. Answers are model output: they are rendered as Markdown with
raw HTML disabled (an answer holding `<script>` shows as text) and images off, and the page
is served under a Content-Security-Policy that allows only its own script and style.
"""

from __future__ import annotations

import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

from icl_search.review.folder import VERDICTS, ReviewError, ReviewFolder, check_rater, verdicts_path
from icl_search.review.verdicts import append_verdicts, read_verdicts

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}


def markdown_renderer():
    """Markdown -> HTML for model output: CommonMark with tables, raw HTML escaped, single
    newlines kept as line breaks, no images (nothing on the page loads from elsewhere)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False})
    md.enable(["table", "strikethrough"]).disable("image")
    return md.render


class RatingDesk:
    """Who rates which sheet, and what each rater has left; the verdict files are the truth."""

    def __init__(self, folder: ReviewFolder):
        self.folder = folder
        self.claims: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rater_locks: dict[str, threading.Lock] = {}
        self.render = markdown_renderer()

    def rater_lock(self, rater: str) -> threading.Lock:
        with self._lock:
            return self._rater_locks.setdefault(rater, threading.Lock())

    def _verdicts(self, rater: str):
        path = verdicts_path(self.folder.path, rater)
        return read_verdicts(path, self.folder.pairs) if path.exists() else []

    def sheet_of(self, rater: str) -> int | None:
        for v in self._verdicts(rater):
            if v.sheet is not None:
                return v.sheet
        return self.claims.get(rater)

    def taken(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {n: [] for n in self.folder.sheets}
        raters = {p.name[len("verdicts-"):-len(".jsonl")] for p in self.folder.verdict_files()}
        for r in sorted(raters | set(self.claims)):
            try:
                s = self.sheet_of(r)  # None for an LLM rater: it rates every pair, on no sheet
            except ReviewError:  # an LLM rater's file: its name is no person's
                continue
            if s in out:
                out[s].append(r)
        return out

    def start(self, rater: str, sheet: int | None) -> dict[str, Any]:
        rater = check_rater(rater)
        with self._lock:
            have = self.sheet_of(rater)
            if have is not None:
                sheet = have  # a returning rater resumes their own sheet
            elif sheet is None:
                taken = self.taken()
                sheet = min(taken, key=lambda n: (len(taken[n]), n))
            elif sheet not in self.folder.sheets:
                raise ReviewError(f"sheet {sheet}: this review has sheets "
                                  f"{', '.join(map(str, self.folder.sheets))}")
            self.claims[rater] = sheet
        return self.state(rater)

    def state(self, rater: str) -> dict[str, Any]:
        rater = check_rater(rater)
        sheet = self.sheet_of(rater)
        if sheet is None:
            raise ReviewError(f"rater {rater!r} has not started: give a name first")
        order = self.folder.sheets[sheet]
        done = {v.pair for v in self._verdicts(rater)}
        left = [p for p in order if p not in done]
        out: dict[str, Any] = {"rater": rater, "sheet": sheet, "total": len(order),
                               "rated": len(order) - len(left)}
        if not left:
            return {**out, "done": True}
        p = self.folder.pairs[left[0]]
        return {**out, "done": False, "position": out["rated"] + 1, "pair": p.pair,
                "query": self.render(p.query), "x": self.render(p.x), "y": self.render(p.y)}

    def rate(self, rater: str, pair: str, verdict: str) -> dict[str, Any]:
        if verdict not in VERDICTS:
            raise ReviewError(f"verdict {verdict!r}: accepted: {', '.join(VERDICTS)}")
        rater = check_rater(rater)
        with self.rater_lock(rater):
            now = self.state(rater)
            if now.get("done") or now["pair"] != pair:
                # a double key press, or a second tab: the verdict is for a pair already rated
                return {**now, "stale": True}
            append_verdicts(self.folder.path, rater, [{"pair": pair, "verdict": verdict,
                                                       "sheet": now["sheet"]}])
            return self.state(rater)


def create_app(folder: str | Path):
    """The FastAPI app serving the rating page for the review at `folder`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    desk = RatingDesk(ReviewFolder(folder))
    app = FastAPI(title="icl-search review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.desk = desk
    static = files("icl_search.review").joinpath("static")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(ReviewError)
    async def _bad(request: Request, exc: ReviewError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def page(route: str):
        name, ctype = _STATIC[route]
        body = static.joinpath(name).read_bytes()
        return lambda: Response(body, media_type=ctype)

    for route in _STATIC:
        app.add_api_route(route, page(route), methods=["GET"], include_in_schema=False)

    @app.get("/api/sheets")
    def sheets() -> dict[str, Any]:
        taken = desk.taken()
        return {"sheets": [{"sheet": n, "pairs": len(ids), "raters": taken.get(n, [])}
                           for n, ids in desk.folder.sheets.items()]}

    @app.post("/api/start")
    def start(body: dict[str, Any]) -> dict[str, Any]:
        sheet = body.get("sheet")
        if sheet not in (None, "") and not str(sheet).isdigit():
            raise ReviewError(f"sheet {sheet!r}: expected a sheet number")
        return desk.start(str(body.get("rater", "")),
                          int(sheet) if sheet not in (None, "") else None)

    @app.get("/api/pair")
    def current(rater: str) -> dict[str, Any]:
        return desk.state(rater)

    @app.post("/api/verdict")
    def verdict(body: dict[str, Any]) -> dict[str, Any]:
        return desk.rate(str(body.get("rater", "")), str(body.get("pair", "")),
                         str(body.get("verdict", "")))

    return app
