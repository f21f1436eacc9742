"""The `llm` plugin: the server's users become llm models that write through it."""

from __future__ import annotations

import pytest

llm = pytest.importorskip("llm")
pytest.importorskip("openai")

from live import serve, two_users  # noqa: E402,F401 - fixtures


def test_llm_sees_each_user_and_prompts_through_the_server(serve, two_users, monkeypatch,
                                                           tmp_path):
    import llm.plugins

    from idiolect.serve import llm_plugin

    live = serve(token="tok")
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm"))
    monkeypatch.setenv("IDIOLECT_SERVE_URL", live.url + "/v1")
    monkeypatch.setenv("IDIOLECT_SERVE_TOKEN", "tok")
    # only llm's default plugins and ours (other installed plugins are not this test's)
    monkeypatch.setattr(llm.plugins, "LLM_LOAD_PLUGINS", "")
    monkeypatch.setattr(llm.plugins, "_loaded", False)
    if not llm.plugins.pm.is_registered(llm_plugin):
        llm.plugins.pm.register(llm_plugin, name="llm_idiolect")
    try:
        ids = [m.model_id for m in llm.get_models()]
        assert "idiolect/ada" in ids and "idiolect/bob" in ids and "tiny" not in ids
        model = llm.get_model("idiolect/ada")
        text = model.prompt("To: list@example.org\nfix: the cache", max_tokens=6,
                            temperature=0, seed=1).text()
        direct = live.client.chat.completions.create(
            model="idiolect/ada", max_tokens=6, temperature=0, seed=1,
            messages=[{"role": "user", "content": "To: list@example.org\nfix: the cache"}])
        assert text == direct.choices[0].message.content
    finally:
        llm.plugins.pm.unregister(llm_plugin)
    assert llm_plugin.served(live.url + "/v1", token=None) == []  # no token: no models
    assert llm_plugin.served("http://127.0.0.1:9/v1", token=None) == []  # nothing there
