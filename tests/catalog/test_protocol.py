"""The wire protocol module: JSON depth without parsing, shared names, and one set of card
settings that every default (CLI, upgrade, warm start, publisher) comes from."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idiolect.catalog import protocol
from idiolect.catalog.protocol import CARD_SETTINGS, json_depth, loads


@pytest.mark.parametrize("text, depth", [
    ("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[[", "]"]', 1),
    (r'["\"[[[", {"k\\": ["]]]"]}]', 3), ("[[],[],[[]]]", 3), ('"{{{{"', 0)])
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth
    assert json_depth(text.encode()) == depth
    json.loads(text)  # each case is valid JSON


def test_loads_refuses_past_the_limit_and_stops_counting_early():
    assert loads(b"[" * 64 + b"]" * 64, "x") == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(protocol.TooDeep, match="x: JSON nested deeper than 64 levels"):
        loads(b"[" * 65 + b"]" * 65, "x")
    with pytest.raises(ValueError):  # TooDeep is a ValueError: callers that catch json's errors
        loads("[" * 200_000 + "]" * 200_000, "body")
    assert json_depth("[" * 1000 + "]" * 1000, limit=10) == 11
    assert json_depth('{"data": "' + "A" * 1_000_000 + '"}', limit=64) == 1


def test_allowed_files_use_the_manifest_names():
    from idiolect.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST

    assert protocol.ALLOWED == (ADAPTER_WEIGHTS, ADAPTER_CONFIG, MANIFEST, "card.json")
    assert protocol.ID_RE.fullmatch("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert not protocol.ID_RE.fullmatch("01ARZ3NDEKTSV4RRFFQ69G5FAU!")


def test_every_card_default_is_the_protocols():
    """Publisher (catalog publish, card_for_adapter), device (catalog select, card_for_user,
    warm_start_plan) and the upgrade's warm start make cards with the same settings."""
    from idiolect.catalog import warm_start
    from idiolect.commands.catalog import publish, select
    from idiolect.upgrade import WarmStartConfig

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    for fn in (warm_start.card_for_user, warm_start.card_for_adapter, warm_start.warm_start_plan):
        assert default(fn, "limit") == CARD_SETTINGS.texts
        assert default(fn, "embedder") == CARD_SETTINGS.embedder
    options = {o.name: o.default for o in publish.params} | {
        "texts": next(o.default for o in select.params if o.name == "texts")}
    assert options["limit"] == options["texts"] == CARD_SETTINGS.texts
    ws = WarmStartConfig()
    assert (ws.texts, ws.card_tokens, ws.embedder) == (CARD_SETTINGS.texts, CARD_SETTINGS.tokens,
                                                       CARD_SETTINGS.embedder)
    gen = warm_start._gen_cfg(None)
    assert gen == CARD_SETTINGS.generation(tokens=ws.card_tokens)
    assert (gen.max_new_tokens, gen.batch_size, gen.seed) == (96, 8, 1234)


def _imported(module: str) -> set[str]:
    """Modules loaded by importing ``module`` in a fresh interpreter."""
    import idiolect

    src = str(Path(idiolect.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    return set(out.stdout.split())


def test_layering_server_match_and_client_import_no_device_code():
    """The server needs matching and the protocol only; the client is HTTP without the server;
    nothing of the server side pulls in torch."""
    server = _imported("idiolect.catalog.server")
    assert {"idiolect.catalog.match", "idiolect.catalog.protocol"} <= server
    assert not server & {"idiolect.catalog.client", "idiolect.catalog.warm_start",
                         "idiolect.home", "torch", "httpx"}
    match = _imported("idiolect.catalog.match")
    assert not match & {"idiolect.catalog.server", "idiolect.home", "torch", "fastapi", "httpx"}
    client = _imported("idiolect.catalog.client")
    assert not client & {"idiolect.catalog.server", "idiolect.catalog.warm_start", "torch"}
