"""Artifacts made by an earlier idiolect (the first wave, commit cab0984) still read: a manifest,
a fingerprint, a recipe and a whole adapter folder, kept in tests/fixtures/v1 as that code wrote
them (a tiny adapter compiled on the tests' tiny Llama)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

V1 = Path(__file__).parent / "fixtures" / "v1"


def test_v1_manifest_reads_into_the_typed_manifest():
    from idiolect.adapters import verify_files
    from idiolect.manifest import Manifest

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a v1 manifest has no key the reader does not know
        m = Manifest.read(V1 / "adapter")
    assert m.schema_version == 1 and m.user == "ada" and m.parent is None and m.gate is None
    assert m.base_name == "tiny" and len(m.base_digest) == 64
    assert m.snapshot["messages"] == 24 and m.eval_set["size"] == 6
    assert m.tokens["steps"] > 0 and m.timings["tokens_per_s"] > 0 and m.peak_rss_mb > 0
    assert set(m.files) == {"adapter_model.safetensors", "adapter_config.json"}
    verify_files(V1 / "adapter", m)  # the PEFT files still match their recorded sha256


def test_v1_recipe_and_fingerprint_read():
    from idiolect.compile.recipe import Recipe
    from idiolect.manifest import Manifest

    recipe = Recipe.from_dict(json.loads((V1 / "adapter" / "recipe.json").read_text()))
    m = Manifest.read(V1 / "adapter")
    now = recipe.to_dict()  # every field the old recipe had reads back as it was; fields added
    assert {k: now[k] for k in m.recipe} == m.recipe  # since then take their defaults
    assert {k: v for k, v in now.items() if k not in m.recipe} == {
        k: v for k, v in Recipe().to_dict().items() if k not in m.recipe}
    assert recipe.rank == 4 and recipe.alpha == 8
    fp = json.loads((V1 / "fingerprint.json").read_text())
    assert fp == m.base["fingerprint"]
    assert fp["modules"]["model.layers.0.self_attn.q_proj"] == [64, 64]


def test_v1_adapter_installs_loads_and_diagnoses_on_todays_tiny_base(home, tiny_base, tmp_path):
    """The old folder, installed in a home of today's code, is found compatible with the tests'
    tiny base (same fingerprint) and loads with plain PEFT."""
    import shutil

    from peft import PeftModel

    from idiolect import adapters, transport
    from idiolect.bases import load as bases
    from idiolect.manifest import Manifest
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    ref = bases.resolve(home, tiny_base)
    assert bases.read_fingerprint(ref)["digest"] == Manifest.read(V1 / "adapter").base_digest
    import_messages(home.conn, "ada", [Message("s", "a body")], source="t", fmt="jsonl")
    m = Manifest.read(V1 / "adapter")
    with adapters.staging(home, m.id) as staging:
        for p in (V1 / "adapter").iterdir():
            shutil.copy(p, staging / p.name)
        adapters.install(home, staging, m)
    d = transport.diagnose(home, m.id, tiny_base, record=False)
    assert d["verdict"] == "compatible", d["message"]
    model, _tok = bases.load(ref)
    peft = PeftModel.from_pretrained(model, str(home.adapters_dir / m.id))
    assert sum("lora_A" in n for n, _ in peft.named_parameters()) == 8


def test_manifest_reader_is_tolerant_and_strict_where_it_must_be(tmp_path):
    from idiolect.errors import InputError
    from idiolect.manifest import Manifest

    data = json.loads((V1 / "adapter" / "manifest.json").read_text())
    with pytest.warns(UserWarning, match="ignoring unknown manifest keys \\['flux'\\]"):
        m = Manifest.from_dict(data | {"flux": 1, "metrics": None})
    assert m.metrics == {}  # null from an older writer: the default
    with pytest.raises(InputError, match="newer than this idiolect"):
        Manifest.from_dict(data | {"schema_version": 99})
    with pytest.raises(InputError, match="lacks snapshot"):
        Manifest.from_dict({k: v for k, v in data.items() if k != "snapshot"})
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable manifest"):
        Manifest.read(tmp_path)
    with pytest.raises(InputError, match="not an idiolect adapter"):
        Manifest.read(tmp_path / "nowhere")
    m.write(tmp_path)  # one writer: manifest.json + recipe.json, read back the same
    assert Manifest.read(tmp_path) == m
    assert json.loads((tmp_path / "recipe.json").read_text()) == m.recipe
