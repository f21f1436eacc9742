"""An `llm` (simonw/llm) plugin: every model a running `idiolect serve` lists, as llm models.

Installed with idiolect (entry point ``llm_idiolect`` in the ``llm`` group); ``llm models``
then shows ``idiolect/USER`` for each user the server answers for, and
``llm -m idiolect/alice "Re: the release schedule"`` writes the body in alice's voice through the
server (llm's own OpenAI chat model pointed at it, streamed). The plugin is an edge, like the
CLI: it reads ``IDIOLECT_SERVE_URL`` (default ``http://127.0.0.1:8000/v1``) and
``IDIOLECT_SERVE_TOKEN``. A server that is not running registers no model (asked with a short
timeout, so other llm commands stay quick).
"""

from __future__ import annotations

import os

import llm

URL_ENV = "IDIOLECT_SERVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000/v1"


def served(url: str, token: str | None, timeout: float = 0.5) -> list[str]:
    """The model ids of the server at ``url`` (its /v1), or [] when it does not answer."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def models(url: str | None = None, token: str | None = None) -> list:
    """llm Chat models, one per model id of the server (the users', and the bare base)."""
    from llm.default_plugins.openai_models import Chat

    url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    token = token or os.environ.get("IDIOLECT_SERVE_TOKEN") or None
    return [Chat(model_id, key=token or "none", model_name=model_id, api_base=url)
            for model_id in served(url, token) if model_id.startswith("idiolect/")]


@llm.hookimpl
def register_models(register) -> None:
    for model in models():
        register(model)
