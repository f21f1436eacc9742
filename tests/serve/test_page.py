"""The try-a-draft page at ``/``: its HTML/JS contract (self-contained, same-origin calls only,
each call an endpoint that answers as the script expects, with a token), the ranking endpoint,
and (slow tier) a real headless Chromium that drafts through the page."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("openai")

from live import add_styled_user, random_adapter, serve, two_users  # noqa: E402,F401 - fixtures

TOKEN = "page-s3cret"


@pytest.fixture
def styled(home, tiny_base) -> dict[str, str]:
    """ada (plain) and bob (shout) with training pools and active random adapters."""
    out = {}
    for seed, (user, style) in enumerate((("ada", "plain"), ("bob", "shout"))):
        add_styled_user(home, user, style)
        out[user] = random_adapter(home, user, tiny_base, seed)
    return out


def calls(html: str) -> list[tuple[str, str]]:
    """(method, path) of every ``api(...)`` call the page's script makes."""
    return re.findall(r'api\("(GET|POST)", "([^"]+)"', html)


def test_the_page_is_self_contained_and_calls_only_its_own_endpoints(serve, two_users):
    import httpx

    live = serve(token=TOKEN)
    r = httpx.get(live.url + "/")  # the page itself needs no token: it carries no data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<script>" in html and "<style>" in html
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]", html)  # no external URL
    assert not re.search(r"(?i)<(script|link|img|iframe)[^>]*(src|href)=", html)
    csp = r.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert "'unsafe-inline'" not in csp  # the inline script and style are allowed by hash
    used = calls(html)
    assert set(used) == {("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("POST", "/v1/idiolect/rank")}
    routes = {(m, route.path) for route in live.app.routes for m in getattr(route, "methods", ())}
    assert all(call in routes for call in used)
    assert 'h["Authorization"] = "Bearer " + token' in html  # the token field is sent


def test_what_the_page_sends_drafts_k_candidates_and_ranks_them(serve, styled):
    import httpx

    live = serve(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(live.url + "/v1/models").status_code == 401
    ids = [m["id"] for m in httpx.get(live.url + "/v1/models", headers=auth).json()["data"]]
    assert [i for i in ids if i.startswith("idiolect/")] == ["idiolect/ada", "idiolect/bob"]
    # the script's two requests, as it builds them
    chat = httpx.post(live.url + "/v1/chat/completions", headers=auth, timeout=60, json={
        "model": "idiolect/ada", "n": 3, "max_tokens": 12,
        "messages": [{"role": "user", "content": "To: bob@example.org\nfix: the cache"}]})
    assert chat.status_code == 200, chat.text
    bodies = [c["message"]["content"] for c in chat.json()["choices"]]
    assert len(bodies) == 3
    ranked = httpx.post(live.url + "/v1/idiolect/rank", headers=auth,
                        json={"model": "idiolect/ada", "bodies": bodies}).json()
    assert ranked["scored"] is True and ranked["user"] == "ada"
    data = ranked["data"]
    assert [d["rank"] for d in data] == [1, 2, 3] and sorted(d["body"] for d in data) == \
        sorted(bodies)
    scores = [d["score"] for d in data]
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    # the user's own style ranks above the other's (the scorer is the user's, not a generic one)
    plain = "the cache index is read twice when we fix the refs in this patch"
    shout = "Fix The Cache!\nAdd A Test!"
    order = httpx.post(live.url + "/v1/idiolect/rank", headers=auth, json={
        "model": "idiolect/bob", "bodies": [plain, shout]}).json()["data"]
    assert order[0]["body"] == shout


def test_rank_refuses_like_the_other_endpoints(serve, styled):
    import httpx

    live = serve(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def rank(body, headers=auth):
        return httpx.post(live.url + "/v1/idiolect/rank", headers=headers, json=body)

    r = rank({"model": "idiolect/ada", "bodies": ["x"]}, headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = rank({"model": "idiolect/cyd", "bodies": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for body, param in (({"model": "tiny", "bodies": ["x"]}, "model"),
                        ({"model": "idiolect/ada", "bodies": []}, "bodies"),
                        ({"model": "idiolect/ada", "bodies": [1]}, "bodies"),
                        ({"model": "idiolect/ada", "bodies": ["x"] * 65}, "bodies"),
                        ({"bodies": ["x"]}, "model")):
        r = rank(body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, body
    r = httpx.post(live.url + "/v1/idiolect/rank", headers=auth, content=b"{not json")
    assert r.status_code == 400


def test_rank_without_a_cohort_keeps_the_order_and_says_why(serve, two_users):
    import httpx

    live = serve()
    r = httpx.post(live.url + "/v1/idiolect/rank",
                   json={"model": "idiolect/ada", "bodies": ["one", "two"]}).json()
    assert r["scored"] is False and "no other user" in r["note"]
    assert [(d["rank"], d["body"], d["score"]) for d in r["data"]] == [(1, "one", None),
                                                                       (2, "two", None)]


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)


@pytest.mark.slow
def test_the_page_drafts_in_a_headless_browser(serve, styled):
    """Chromium loads the page with a token in the fragment and ``run=1``, lists the users,
    drafts K=3 and shows them ranked; the screenshot goes to bench/results/serve_page.png."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium (apt-get install chromium)")
    from urllib.parse import quote

    live = serve(token=TOKEN)
    url = (f"{live.url}/?user=bob&subject={quote('Re: the release schedule')}"
           f"&to={quote('ada@example.org, list@example.org')}&k=3&run=1#token={TOKEN}")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--virtual-time-budget=30000", "--window-size=900,1100"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-state="done"' in dom, dom[-2000:]
    drafts = re.findall(r'<li class="draft" data-rank="(\d)">', dom)
    assert drafts == ["1", "2", "3"]
    assert dom.count('<button type="button" class="copy">Copy</button>') == 3
    assert "ranked by their style scorer" in dom
    assert live.stats["max_rows_in_batch"] >= 3  # the K drafts were rows of one batch
    shot = Path(__file__).resolve().parents[2] / "bench" / "results" / "serve_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
