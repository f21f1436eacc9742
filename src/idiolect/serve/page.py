"""The try-a-draft page at ``/`` and the ranking endpoint it uses.

    GET  /                      one self-contained HTML page (inline CSS and JS, no external URL;
                                its Content-Security-Policy lets it reach this origin only)
    POST /v1/idiolect/rank      {"model": "idiolect/USER", "bodies": [...]} -> the bodies best
                                first under USER's own style scorer (``draft.rank``)

How the page drafts: it lists ``idiolect/USER`` models from ``GET /v1/models``, asks
``POST /v1/chat/completions`` for ``n`` = K choices (one request: K rows of the same batch, through
the batcher like any client's), then ``POST /v1/idiolect/rank`` with their texts, and shows them
ranked with a copy button. Ranking is a separate endpoint, not a field of the chat reply, so the
OpenAI endpoints stay exactly OpenAI's and any client (the llm plugin, a script) can rank what it
drafted. With ``--token`` the page has a token field (kept in the tab's sessionStorage) and sends
``Authorization: Bearer``; the page itself carries no data and needs no token.

URL parameters prefill the form, from the query or, for the token, better the fragment (never sent
to the server nor logged): ``/?user=ada&subject=...&to=a@b,c@d&k=3&run=1#token=T``; ``run=1``
drafts at once (how the browser test drives it).
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class.

import base64
import hashlib
from typing import Callable

from .schemas import Invalid

MAX_BODIES = 64
MAX_BODY_CHARS = 20_000

STYLE = """
:root { --fg: #1d232a; --mute: #5b6670; --line: #d8dde2; --accent: #2458c6; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 760px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.lead { margin: 0 0 18px; color: var(--mute); }
form { display: grid; grid-template-columns: 120px 1fr; gap: 10px 12px; align-items: center;
       background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px; }
label { color: var(--mute); }
input, select, button { font: inherit; padding: 6px 8px; border: 1px solid var(--line);
                        border-radius: 6px; background: #fff; color: var(--fg); }
input[type=number] { width: 80px; }
.row { display: flex; gap: 10px; align-items: center; }
button { cursor: pointer; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff;
                 padding: 7px 18px; }
button:disabled { opacity: .55; cursor: default; }
#status { min-height: 22px; margin: 14px 2px; color: var(--mute); }
#status.error { color: #b3261e; }
ol#drafts { list-style: none; padding: 0; margin: 0; }
li.draft { background: #fff; border: 1px solid var(--line); border-radius: 8px;
           padding: 12px 14px; margin: 0 0 12px; }
li.draft header { display: flex; gap: 10px; align-items: center; margin-bottom: 6px;
                  color: var(--mute); font-size: 13px; }
li.draft header b { color: var(--fg); font-size: 14px; }
li.draft header .copy { margin-left: auto; font-size: 13px; padding: 3px 10px; }
li.draft .warn { color: #8a5300; }
li.draft pre.body { margin: 0; white-space: pre-wrap; word-break: break-word;
                    font: 14px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
for (const [k, v] of new URLSearchParams(location.hash.slice(1))) params.set(k, v);
const state = (s) => { document.body.dataset.state = s; };

function headers() {
  const h = {"Content-Type": "application/json"};
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, {method, headers: headers(),
                               body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : r.status + " " + r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadUsers() {
  const select = $("user");
  try {
    const list = await api("GET", "/v1/models");
    const users = list.data.map((m) => m.id).filter((id) => id.startsWith("idiolect/"));
    select.replaceChildren();
    for (const id of users) {
      const o = document.createElement("option");
      o.value = id;
      o.textContent = id.slice("idiolect/".length);
      select.append(o);
    }
    const want = params.get("user");
    if (want) select.value = want.startsWith("idiolect/") ? want : "idiolect/" + want;
    if (!users.length) { say("No user has an active adapter on this server yet.", true); return false; }
    say(users.length + " user(s). Write a subject and draft.");
    return true;
  } catch (e) {
    say(e.status === 401 ? "This server needs a token: enter it above, then Reload users."
                         : "Could not list users: " + e.message, true);
    state("error");
    return false;
  }
}

function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text) && done());
  } else if (fallbackCopy(text)) {
    done();
  }
}

function fallbackCopy(text) {
  const t = document.createElement("textarea");
  t.value = text;
  document.body.append(t);
  t.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  t.remove();
  return ok;
}

function show(ranked) {
  const list = $("drafts");
  list.replaceChildren();
  for (const d of ranked) {
    const li = document.createElement("li");
    li.className = "draft";
    li.dataset.rank = d.rank;
    const head = document.createElement("header");
    const b = document.createElement("b");
    b.textContent = "#" + d.rank;
    head.append(b);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = d.score === null ? "unscored" : "P(user) " + d.score.toFixed(3);
    head.append(score);
    if (d.copies_training) {
      const w = document.createElement("span");
      w.className = "warn";
      w.textContent = "copies a training message";
      head.append(w);
    }
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => copyText(d.body, copy));
    head.append(copy);
    const pre = document.createElement("pre");
    pre.className = "body";
    pre.textContent = d.body;
    li.append(head, pre);
    list.append(li);
  }
}

async function draft(event) {
  if (event) event.preventDefault();
  const model = $("user").value;
  const subject = $("subject").value.trim();
  const to = $("to").value.trim();
  const k = parseInt($("k").value, 10) || 1;
  if (!model) { say("Pick a user first.", true); return; }
  if (!subject) { say("Write a subject.", true); return; }
  $("go").disabled = true;
  state("busy");
  say("Drafting " + k + " candidate(s)...");
  const started = performance.now();
  try {
    const content = (to ? "To: " + to + "\\n" : "") + subject;
    const chat = await api("POST", "/v1/chat/completions",
                           {model, n: k, messages: [{role: "user", content}]});
    const bodies = chat.choices.map((c) => c.message.content);
    const ranked = await api("POST", "/v1/idiolect/rank", {model, bodies});
    show(ranked.data);
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    say(ranked.data.length + " draft(s) by " + model.slice(9) + ", best first (" + secs + " s, "
        + (ranked.scored ? "ranked by their style scorer" : "unranked: " + ranked.note) + ").");
    state("done");
  } catch (e) {
    say("Drafting failed: " + e.message, true);
    state("error");
  } finally {
    $("go").disabled = false;
  }
}

async function start() {
  $("token").value = params.get("token") || sessionStorage.getItem("idiolect-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("idiolect-token", $("token").value));
  $("subject").value = params.get("subject") || "";
  $("to").value = params.get("to") || "";
  if (params.get("k")) $("k").value = params.get("k");
  $("form").addEventListener("submit", draft);
  $("reload").addEventListener("click", loadUsers);
  state("ready");
  if (await loadUsers() && params.get("run") === "1") await draft();
}

start();
"""

BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>idiolect: try a draft</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>Try a draft</h1>
<p class="lead">A user's adapter writes K candidates; their own style scorer ranks them.</p>
<form id="form" autocomplete="off">
  <label for="user">User</label>
  <div class="row"><select id="user" required></select>
    <button type="button" id="reload">Reload users</button></div>
  <label for="subject">Subject</label>
  <input id="subject" placeholder="Re: the release schedule">
  <label for="to">Recipients</label>
  <input id="to" placeholder="bob@example.org, list@example.org">
  <label for="k">Drafts (K)</label>
  <div class="row"><input id="k" type="number" min="1" max="16" value="3">
    <button class="primary" id="go" type="submit">Draft</button></div>
  <label for="token">Token</label>
  <input id="token" type="password" placeholder="only if the server was started with --token">
</form>
<div id="status" role="status"></div>
<ol id="drafts"></ol>
</main>
<script>{script}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HTML = BODY.replace("{style}", STYLE).replace("{script}", SCRIPT)
# Only this page's own inline style and script run; it may fetch from this origin, nothing else.
CSP = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)};"
       " connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none';"
       " frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def rank_bodies(models, body) -> dict:
    """The ``/v1/idiolect/rank`` answer for a parsed request body (``Invalid`` when it is wrong)."""
    from ..draft import rank
    from ..errors import NotFound

    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    model, bodies = body.get("model"), body.get("bodies")
    if not isinstance(model, str):
        raise Invalid("model: a string is required (idiolect/USER)", "model")
    if not isinstance(bodies, list) or not bodies or \
            not all(isinstance(b, str) for b in bodies):
        raise Invalid("bodies: a non-empty list of strings is required", "bodies")
    if len(bodies) > MAX_BODIES or any(len(b) > MAX_BODY_CHARS for b in bodies):
        raise Invalid(f"bodies: at most {MAX_BODIES} of at most {MAX_BODY_CHARS} characters",
                      "bodies")
    try:
        target = models.resolve(model)
    except NotFound as e:
        raise Invalid(str(e), "model", "model_not_found", status=404) from None
    if target.user is None:
        raise Invalid("model: ranking needs a user's model (idiolect/USER), not the bare base",
                      "model")
    notes: list[str] = []
    ranked = rank(models.read_home(), target.user, bodies, log=notes.append)
    scored = any(d["score"] is not None for d in ranked)
    out = {"object": "list", "model": model, "user": target.user, "scored": scored,
           "data": ranked}
    if not scored:
        out["note"] = "no other user in this home to tell this user's style from"
    return out


def register(app, models, authorize: Callable, read_json: Callable) -> None:
    """Add ``/`` and ``/v1/idiolect/rank`` to the app; ``authorize(request)`` and
    ``await read_json(request)`` are the app's own (token check, size-limited JSON body)."""
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(HTML, headers=HEADERS)

    @app.post("/v1/idiolect/rank")
    async def rank_endpoint(request: Request) -> dict:
        authorize(request)
        body = await read_json(request)
        # the scorer may be fitted on the first call (then cached): off the event loop
        return await run_in_threadpool(rank_bodies, models, body)
