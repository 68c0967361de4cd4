// The rating page: name -> one pair at a time -> verdict (keys 1/2/3 or the buttons).
// The server renders answers to HTML with raw HTML escaped; this script only places it.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let rater = null;
  let current = null;
  let busy = false;

  async function call(method, url, body) {
    const init = { method, headers: { "Content-Type": "application/json" } };
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await fetch(url, init);
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  function show(state) {
    $("error").textContent = "";
    current = state;
    $("start").hidden = true;
    if (state.done) {
      $("rating").hidden = true;
      $("finished").hidden = false;
      $("progress").textContent = `${state.total} of ${state.total} rated`;
      return;
    }
    $("rating").hidden = false;
    $("progress").textContent = `${state.position} of ${state.total}`;
    $("query").innerHTML = state.query;
    $("x").innerHTML = state.x;
    $("y").innerHTML = state.y;
    window.scrollTo(0, 0);
  }

  function setBusy(on) {
    busy = on;
    for (const b of document.querySelectorAll("[data-verdict]")) b.disabled = on;
  }

  async function rate(verdict) {
    if (busy || !current || current.done) return;
    setBusy(true);
    try {
      show(await call("POST", "/api/verdict", { rater, pair: current.pair, verdict }));
    } catch (e) {
      $("error").textContent = `not saved: ${e.message}`;
    } finally {
      setBusy(false);
    }
  }

  async function loadSheets() {
    try {
      const { sheets } = await call("GET", "/api/sheets");
      for (const s of sheets) {
        const o = document.createElement("option");
        o.value = String(s.sheet);
        const who = s.raters.length ? ` (${s.raters.join(", ")})` : "";
        o.textContent = `sheet ${s.sheet}: ${s.pairs} pairs${who}`;
        $("sheet").append(o);
      }
    } catch (e) {
      $("error").textContent = e.message;
    }
  }

  $("start").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("rater").value.trim();
    try {
      const state = await call("POST", "/api/start", { rater: name, sheet: $("sheet").value || null });
      rater = state.rater;
      localStorage.setItem("icl-review-rater", rater);
      show(state);
    } catch (e) {
      $("error").textContent = e.message;
    }
  });

  for (const b of document.querySelectorAll("[data-verdict]")) {
    b.addEventListener("click", () => rate(b.dataset.verdict));
  }
  document.addEventListener("keydown", (ev) => {
    if (!rater || ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const verdict = { "1": "X", "2": "Y", "3": "tie" }[ev.key];
    if (verdict) {
      ev.preventDefault();
      rate(verdict);
    }
  });

  $("rater").value = localStorage.getItem("icl-review-rater") || "";
  loadSheets();
})();
