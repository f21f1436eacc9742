"""Warm start from a neighbour (XPerT) on the tiny model: publish two styles, select, pull,
compile from the pulled adapter, and merge two adapters when none is close."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import home_at, synthetic_messages  # noqa: E402

TOKEN = "warm-token"
RECIPE = {"rank": 4, "alpha": 8, "epochs": 2, "max_tokens": 96, "batch_tokens": 384, "lr": 3e-3,
          "warmup_steps": 0, "checkpoint_every": 100, "threads": 1}


def _user(conn, name: str, style: str, n: int = 40) -> None:
    from idiolect.vault.message import Message
    from idiolect.vault.store import freeze_eval, import_messages

    msgs = [Message(subject=m["subject"], body=m["body"], to=m["to"], date=m["date"],
                    source_id=m["id"]) for m in synthetic_messages(name, n, style=style)]
    import_messages(conn, name, msgs, source="test", fmt="jsonl")
    freeze_eval(conn, name, size=8)


def _gen():
    from idiolect.generate import GenerationConfig

    return GenerationConfig(max_new_tokens=48, batch_size=16, seed=1234)


def _recipe():
    from idiolect.compile.recipe import Recipe

    return Recipe.from_dict(RECIPE)


@pytest.fixture(scope="module")
def catalog_two_styles(tmp_path_factory, tiny_model_dir):
    """A publisher's home with a 'shout' and a 'plain' adapter, both published to a live server.
    Also the card of the device user 'newshout' (computed once, in a home of its own).
    Yields (url, {style: adapter id}, card)."""
    from dataclasses import replace

    from idiolect.bases.load import add_local
    from idiolect.catalog.warm_start import publish_adapter
    from idiolect.catalog.warm_start import card_for_user
    from idiolect.catalog.server import create_app, serve_in_thread
    from idiolect.compile.run import CompileRequest, compile_adapter
    from conftest import open_home

    root = tmp_path_factory.mktemp("xpert")
    url, stop = serve_in_thread(create_app(root / "server", TOKEN))
    with home_at(root / "publisher"):
        home = open_home()
        conn = home.conn
        add_local(home, "tiny", tiny_model_dir)
        ids = {}
        for name, style in (("shouty", "shout"), ("plainy", "plain")):
            _user(conn, name, style)
            trained = replace(_recipe(), epochs=3, lr=1e-2)  # a neighbour worth starting from
            m = compile_adapter(home, CompileRequest(name, "tiny", recipe=trained))
            ids[style] = publish_adapter(home, m.id, url, TOKEN, card_source="training",
                                         embedder="hash", limit=16, cfg=_gen())["id"]
    with home_at(root / "device0"):
        home = open_home()
        conn = home.conn
        add_local(home, "tiny", tiny_model_dir)
        _user(conn, "newshout", "shout")
        card = card_for_user(home, "newshout", "tiny", limit=16, cfg=_gen(), embedder="hash")
    yield url, ids, card
    stop()


@pytest.fixture
def device(tiny_base):
    """This test's own home (the device): a new 'shout' user, no adapter yet."""
    from conftest import open_home

    home = open_home()
    _user(home.conn, "newshout", "shout")
    return home


def test_warm_start_pulls_the_neighbour_and_starts_from_its_weights(catalog_two_styles, device):
    from idiolect import adapters
    from idiolect.catalog.warm_start import warm_start_plan
    from idiolect.compile.run import CompileRequest, compile_adapter

    url, ids, card = catalog_two_styles
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                           threshold=0.3)
    assert plan["decision"] == "pull" and plan["adapter"] == ids["shout"], plan
    assert [m["id"] for m in plan["matches"]] == [ids["shout"], ids["plain"]]
    assert plan["matches"][0]["score"] > plan["matches"][1]["score"]
    row = adapters.get(device.conn, plan["adapter"])
    assert row["state"] == "candidate" and row["user"] == "newshout"

    warm = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=_recipe(),
                                                  parent=plan["adapter"]))
    cold = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=_recipe()))
    assert warm.parent == ids["shout"] and cold.parent is None
    # the neighbour of the other style helps less: selection matters, not just any warm start
    from idiolect.catalog.client import CatalogClient

    other = CatalogClient(url).pull(device, ids["plain"], "newshout", base="tiny")
    wrong = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=_recipe(),
                                                   parent=other))
    first = {k: m.metrics["train_loss_first"]
             for k, m in (("warm", warm), ("cold", cold), ("other", wrong))}
    # measured: warm 5.879, other style 5.981, base 6.013 (step-1 loss, same batch)
    assert first["warm"] < first["other"] - 0.05 and first["warm"] < first["cold"] - 0.08, first


def test_incompatible_recipe_is_skipped_not_loaded(catalog_two_styles, device):
    from dataclasses import replace

    from idiolect.catalog.warm_start import warm_start_plan

    url, _, card = catalog_two_styles
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=replace(_recipe(), rank=8),
                           card=card, threshold=0.3)
    assert plan["matches"] == [] and len(plan["skipped"]) == 2
    assert "rank 4 != 8" in plan["skipped"][0]["reason"]
    # no usable match: the two nearest are merged and re-factored to the recipe's rank 8
    assert plan["decision"] == "merge"


def test_a_part_of_the_recipes_modules_seeds_it_and_the_rest_start_fresh(catalog_two_styles,
                                                                        device):
    """An attention-only neighbour seeds a recipe with LoRA on the MLP too (as SmolLM2's is
    now): the pulled weights load into the attention pairs, the MLP pairs start at B = 0, so the
    compile's first loss is the neighbour's own (not the base's); a neighbour with modules the
    recipe lacks, or other layers, is still skipped."""
    from dataclasses import replace

    from idiolect.catalog.match import incompatible
    from idiolect.catalog.warm_start import warm_start_plan
    from idiolect.compile.run import CompileRequest, compile_adapter

    url, ids, card = catalog_two_styles
    attn = list(_recipe().target_modules)
    assert "gate_proj" not in attn
    mlp = replace(_recipe(), target_modules=attn + ["gate_proj", "up_proj", "down_proj"])
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=mlp, card=card, threshold=0.3)
    assert plan["decision"] == "pull" and plan["sources"] == [ids["shout"]], plan
    assert plan["matches"][0]["fresh"] == ["gate_proj", "up_proj", "down_proj"]
    assert "gate_proj, up_proj, down_proj: those start fresh" in plan["reason"]

    one = replace(mlp, epochs=0.01)  # the first step only: its loss is the starting model's
    same = replace(_recipe(), epochs=0.01)
    seeded = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=one,
                                                    parent=plan["adapter"]))
    as_is = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=same,
                                                   parent=plan["adapter"]))
    cold = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=one))
    first = {k: m.metrics["train_loss_first"] for k, m in
             (("seeded", seeded), ("as_is", as_is), ("cold", cold))}
    assert abs(first["seeded"] - first["as_is"]) < 1e-4, first
    assert first["seeded"] < first["cold"] - 0.05, first

    have = {"rank": 4, "alpha": 8, "target_modules": attn, "lora_layers": 0}
    assert incompatible(have, mlp) is None
    assert "not within" in incompatible(have | {"target_modules": attn + ["up_proj"]},
                                        _recipe())
    assert "lora_layers 0 not within 1" in incompatible(have, replace(mlp, lora_layers=1))
    assert incompatible(have | {"lora_layers": 1}, mlp) is None  # top layer within all layers
    # k >= the base's depth is all layers, as the training loop reads it (when the depth is known)
    assert "lora_layers 0 not within 30" in incompatible(have, replace(mlp, lora_layers=30))
    assert incompatible(have, replace(mlp, lora_layers=30), n_layers=30) is None
    # k >= depth is all layers, named as each recipe wrote it
    assert "lora_layers 40 not within 2" in incompatible(have | {"lora_layers": 40},
                                                         replace(mlp, lora_layers=2), 30)
    assert "alpha 8.0 != 16.0" in incompatible(have, replace(mlp, alpha=16))


def _delta(folder: Path, module: str):
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    return (cfg["lora_alpha"] / cfg["r"]) * (t[f"{module}.lora_B.weight"]
                                             @ t[f"{module}.lora_A.weight"])


def test_merge_is_a_loadable_peft_folder_with_the_weighted_delta(catalog_two_styles, device,
                                                                  tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from idiolect import adapters
    from idiolect.catalog.client import CatalogClient
    from idiolect.catalog.merge import merge_adapters

    url, ids, _ = catalog_two_styles
    client = CatalogClient(url)
    a, b = (client.pull(device, ids[s], "newshout", base="tiny") for s in ("shout", "plain"))
    fa, fb = (Path(adapters.get(device.conn, i)["path"]) for i in (a, b))
    module = "base_model.model.model.layers.1.self_attn.v_proj"
    want = 0.7 * _delta(fa, module) + 0.3 * _delta(fb, module)

    exact = merge_adapters(device, [(a, 0.7), (b, 0.3)], "newshout")
    svd = merge_adapters(device, [(a, 0.7), (b, 0.3)], "newshout", rank=4, alpha=8.0)
    for m, rank in ((exact, 8), (svd, 4)):
        folder = Path(adapters.get(device.conn, m.id)["path"])
        adapters.verify_files(folder)
        assert m.warm_start["merge"]["sources"] == [a, b] and m.recipe["rank"] == rank
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          str(folder))
        assert model.peft_config["default"].r == rank
        assert sum("lora_A" in n for n, _ in model.named_parameters()) == 8
    got = _delta(Path(adapters.get(device.conn, exact.id)["path"]), module)
    assert torch.allclose(got, want, atol=1e-5)
    # rank 4 of a rank-8 sum: the best rank-4 approximation (never better than exact, close)
    approx = _delta(Path(adapters.get(device.conn, svd.id)["path"]), module)
    err = float((approx - want).norm() / want.norm())
    assert 0 <= err < 1 and svd.warm_start["merge"]["energy_kept"] > 0.5
    # naive averaging of the factors is not the averaged delta (why merge works on deltas)
    from safetensors.torch import load_file

    ta, tb = (load_file(str(f / "adapter_model.safetensors")) for f in (fa, fb))
    naive = 2.0 * ((0.7 * ta[f"{module}.lora_B.weight"] + 0.3 * tb[f"{module}.lora_B.weight"])
                   @ (0.7 * ta[f"{module}.lora_A.weight"] + 0.3 * tb[f"{module}.lora_A.weight"]))
    assert float((naive - want).norm()) > float((got - want).norm()) + 1e-3


def test_adapters_prompted_differently_do_not_merge(catalog_two_styles, device):
    """A shots adapter and a plain one learned different prompts: a merge would be asked one
    parent's way, so it is refused, naming both; the automatic fallback only pairs alike."""
    from dataclasses import replace

    import pytest

    from idiolect.catalog.client import CatalogClient
    from idiolect.catalog.merge import merge_adapters
    from idiolect.catalog.warm_start import _prompt
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.errors import IdiolectError

    url, ids, _ = catalog_two_styles
    plain = CatalogClient(url).pull(device, ids["plain"], "newshout", base="tiny")
    shots = compile_adapter(device, CompileRequest("newshout", "tiny",
                                                   recipe=replace(_recipe(), shots=1,
                                                                  epochs=0.2))).id
    with pytest.raises(IdiolectError, match="prompted differently") as e:
        merge_adapters(device, [(shots, 0.5), (plain, 0.5)], "newshout")
    assert shots in str(e.value) and plain in str(e.value) and "'shots': 1" in str(e.value)
    assert _prompt({"recipe": {"shots": 2}}) != _prompt({"recipe": {}}) == _prompt({})
    # without shots, shot_tokens shapes no prompt
    assert _prompt({"recipe": {"shots": 0, "shot_tokens": 9}}) == _prompt({})


def test_the_merge_pair_is_asked_alike_the_recipes_way_first():
    from dataclasses import replace

    from idiolect.catalog.warm_start import merge_pair

    def m(i, score, **r):
        return {"id": i, "score": score, "recipe": r}

    plain, shots = {}, {"shots": 2}
    found = [m("a", 0.9, **shots), m("b", 0.8), m("c", 0.7, **shots), m("d", 0.6)]
    ids = lambda pair: [x["id"] for x in pair]  # noqa: E731
    assert ids(merge_pair(found)) == ["a", "c"]                       # the best's way
    assert ids(merge_pair(found, _recipe())) == ["b", "d"]            # the recipe's way first
    assert ids(merge_pair(found, replace(_recipe(), shots=2))) == ["a", "c"]
    # the recipe's way has one match only: the best pair asked alike instead
    assert ids(merge_pair(found[:3], _recipe())) == ["a", "c"]
    assert merge_pair([m("a", 0.9, **shots), m("b", 0.8, **plain)]) == []


def test_adapters_of_a_part_of_the_recipes_modules_merge_into_their_union(device, tiny_base):
    """An attention-only adapter and one with the MLP too merge (issue #21: the catalog's older
    adapters and SmolLM2's MLP recipe): each module's delta is the weighted sum of the parents
    that have it, the merge records the union of their modules, and it seeds a recipe holding
    them; modules or layers outside the recipe are still not mergeable."""
    from dataclasses import replace

    import torch

    from idiolect import adapters
    from idiolect.catalog.merge import merge_adapters
    from idiolect.catalog.warm_start import _mergeable
    from idiolect.compile.run import CompileRequest, compile_adapter

    attn, mlp = ["q_proj", "v_proj"], ["q_proj", "v_proj", "gate_proj"]
    a = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=replace(
        _recipe(), target_modules=attn, epochs=0.5, lr=1e-2)))
    b = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=replace(
        _recipe(), target_modules=mlp, epochs=0.5, lr=1e-2)))
    fa, fb = (Path(adapters.get(device.conn, m.id)["path"]) for m in (a, b))
    merged = merge_adapters(device, [(a.id, 0.6), (b.id, 0.4)], "newshout")
    assert merged.recipe["target_modules"] == sorted(mlp)
    fm = Path(adapters.get(device.conn, merged.id)["path"])
    for mod, want in (("self_attn.v_proj", 0.6 * _delta(fa, "base_model.model.model.layers.1."
                                                        "self_attn.v_proj")
                       + 0.4 * _delta(fb, "base_model.model.model.layers.1.self_attn.v_proj")),
                      ("mlp.gate_proj", 0.4 * _delta(fb, "base_model.model.model.layers.1."
                                                     "mlp.gate_proj"))):
        got = _delta(fm, f"base_model.model.model.layers.1.{mod}")
        assert torch.allclose(got, want, atol=1e-5), mod
    # the merge is at rank 8 (the sum of the parents'): it seeds a rank-8 recipe with the MLP
    seeded = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=replace(
        _recipe(), target_modules=mlp + ["o_proj"], rank=8, alpha=8.0, epochs=0.2),
        parent=merged.id))
    assert seeded.parent == merged.id
    wide = replace(_recipe(), target_modules=mlp)
    assert _mergeable({"recipe": {"target_modules": attn}}, wide)
    assert not _mergeable({"recipe": {"target_modules": mlp + ["o_proj"]}}, wide)
    assert not _mergeable({"recipe": {"target_modules": attn}}, replace(wide, lora_layers=1))


def test_merge_fallback_gives_a_parent_that_compiles(catalog_two_styles, device):
    from idiolect.catalog.warm_start import warm_start_auto
    from idiolect.compile.run import CompileRequest, compile_adapter

    url, ids, _ = catalog_two_styles
    # the card computed here, on the device, from the user's own data (not the fixture's)
    parent = warm_start_auto(device, "newshout", "tiny", url, recipe=_recipe(), embedder="hash",
                             limit=16, cfg=_gen(), threshold=1.01)  # none that close: merge
    assert parent is not None and parent not in ids.values()
    m = compile_adapter(device, CompileRequest("newshout", "tiny", recipe=_recipe(),
                                               parent=parent))
    assert m.parent == parent and m.tokens["steps"] > 0


def test_confirm_overrides_a_misleading_card_with_local_perplexity(catalog_two_styles, device):
    """A card that points at the wrong style: the device pulls the top two and keeps the one that
    fits its own training messages; the decision says why, with both perplexities and the base's."""
    from idiolect.catalog.warm_start import card_for_user, warm_start_plan

    url, ids, _ = catalog_two_styles
    _user(device.conn, "newplain", "plain")
    plain_card = card_for_user(device, "newplain", "tiny", limit=16, cfg=_gen(), embedder="hash")
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=plain_card,
                           confirm=2, probe=8, race=False, merge=False)  # each on every message
    assert [m["id"] for m in plan["matches"]][0] == ids["plain"]  # the card still ranks plain 1st
    ppl = plan["confirmed"]["perplexity"]
    assert plan["decision"] == "pull" and plan["adapter"] == ids["shout"], plan
    assert ppl[ids["shout"]] < ppl[ids["plain"]] and ppl[ids["shout"]] < (
        plan["confirmed"]["base_perplexity"])
    assert "card rank 2 of 2" in plan["reason"] and plan["confirmed"]["messages"] == 8
    # the neighbour pulled only to be probed is gone again, row and folder; the chosen stays
    assert plan["confirmed"]["discarded"] == [ids["plain"]]
    local = {r["id"]: r["path"] for r in device.conn.execute("SELECT id, path FROM adapters")}
    assert ids["plain"] not in local and ids["shout"] in local
    assert not (device.adapters_dir / ids["plain"]).exists()
    raced = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=plain_card,
                            confirm=2, probe=8, merge=False)  # the race: plain out after 2
    assert raced["adapter"] == ids["shout"] and "card rank 2 of 2" in raced["reason"], raced
    assert raced["confirmed"]["probed_on"] == {ids["plain"]: 2, ids["shout"]: 8}
    assert raced["confirmed"]["perplexity"][ids["shout"]] == pytest.approx(ppl[ids["shout"]],
                                                                        rel=1e-4)
    card_only = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(),
                                card=plain_card, threshold=0.0)
    assert card_only["adapter"] == ids["plain"] and "confirmed" not in card_only
    one = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=plain_card,
                          confirm=1)  # only the card's first is tried: kept if it beats the base
    assert list(one["confirmed"]["perplexity"]) == [ids["plain"]]
    assert one["confirmed"]["discarded"] == []  # the home had it before: never removed here
    # every model is probed in the prompt format of the compile to come: with shots, the
    # bare base gets them too (not only the adapters trained with them)
    from dataclasses import replace

    assert plan["confirmed"]["prompt_format"] == {"shots": 0}
    shots = warm_start_plan(device, "newshout", "tiny", url, recipe=replace(_recipe(), shots=1),
                            card=plain_card, confirm=1)
    assert shots["confirmed"]["prompt_format"] == {"shots": 1, "shot_tokens": 64}
    assert shots["confirmed"]["base_perplexity"] != one["confirmed"]["base_perplexity"]
    assert (shots["confirmed"]["perplexity"][ids["plain"]]
            != one["confirmed"]["perplexity"][ids["plain"]])


def test_discard_keeps_what_something_rests_on(tmp_path, tiny_base, home):
    from conftest import force_promote
    from idiolect import adapters
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.errors import IdiolectError
    from test_transport import RECIPE, add_user

    add_user(tmp_path, "ada", "plain")
    parent = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
        RECIPE)))
    child = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
        RECIPE), parent=parent.id))
    with pytest.raises(IdiolectError, match="parent"):
        adapters.discard(home, parent.id)
    force_promote(home, child.id)
    with pytest.raises(IdiolectError, match="active"):
        adapters.discard(home, child.id)
    assert {parent.id, child.id} <= {r["id"] for r in adapters.list_adapters(home.conn)}


def test_a_parent_of_another_scale_rank_or_base_is_refused_before_any_work(tmp_path, tiny_base,
                                                                           tiny_model_dir, home):
    """``compile --parent`` applies the catalog's rule: a parent of another alpha would load at
    this recipe's scale (silently wrong), one of another rank would not load; both are refused
    by name before a run starts, and the parent stays as it was. So is a parent of another
    (cached) base, before that base is loaded."""
    from idiolect import adapters
    from idiolect.bases.load import add_local
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.errors import IdiolectError
    from test_transport import RECIPE, add_user, make_variant

    add_user(tmp_path, "ada", "plain")
    parent = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
        RECIPE)))
    runs = home.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    for change, named in (({"alpha": RECIPE["alpha"] * 2}, "alpha"),
                          ({"rank": RECIPE["rank"] * 2}, "rank")):
        with pytest.raises(IdiolectError, match=f"cannot seed this recipe: .*{named}"):
            compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
                {**RECIPE, **change}), parent=parent.id))
    add_local(home, "tiny-other", make_variant(tmp_path / "other", tiny_model_dir, 64, 1))
    with pytest.raises(IdiolectError, match=f"{parent.id} was compiled for another base .tiny."):
        compile_adapter(home, CompileRequest("ada", "tiny-other", recipe=Recipe.from_dict(RECIPE),
                                             parent=parent.id))
    assert home.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
    assert [r["id"] for r in adapters.list_adapters(home.conn)] == [parent.id]


def test_choose_confirmed_needs_to_beat_the_base():
    from idiolect.catalog.warm_start import choose_confirmed

    assert choose_confirmed({None: 10.0, "a": 9.0, "b": 8.0}) == "b"
    assert choose_confirmed({None: 10.0, "a": 8.0, "b": 8.0}) == "a"  # the card's order on ties
    assert choose_confirmed({None: 7.0, "a": 9.0, "b": 8.0}) is None
    assert choose_confirmed({None: 7.0}) is None
    # a race's dropped candidate (fewer messages) is never compared, however low its perplexity
    on = {None: 16, "a": 4, "b": 16}
    assert choose_confirmed({None: 10.0, "a": 5.0, "b": 8.0}, on) == "b"
    assert choose_confirmed({None: 7.0, "a": 5.0, "b": 8.0}, on) is None


def test_rank_candidates_puts_the_race_before_perplexity():
    """The merge's second source (product and bench alike): the furthest a race probed, then the
    lowest perplexity, the card's order on ties; the bare base's key never ranks."""
    from idiolect.catalog.warm_start import rank_candidates

    ppl = {None: 10.0, "a": 5.0, "b": 8.0, "c": 7.0, "d": 7.0}
    assert rank_candidates(ppl, {None: 16, "a": 4, "b": 16, "c": 8, "d": 8}) == ["b", "c", "d",
                                                                                "a"]
    assert rank_candidates(ppl, {}) == ["a", "c", "d", "b"]  # no race: perplexity alone


def test_a_race_never_chooses_a_candidate_it_dropped(catalog_two_styles, device, monkeypatch):
    """The plan chooses among the candidates that saw every probe message: the card's first,
    dropped after a quarter with a lower perplexity there, loses to the second."""
    import idiolect.catalog.warm_start as ws

    url, ids, card = catalog_two_styles

    def raced(home, user, base, adapter_ids, probe, log=None, fmt=None, race=False):
        assert race
        first, second = adapter_ids
        return {"perplexity": {None: 20.0, first: 3.0, second: 9.0}, "messages": 16,
                "prompt_format": fmt, "probed_on": {None: 16, first: 4, second: 16},
                "race": True, "seconds": 0.0}

    monkeypatch.setattr(ws, "probe_perplexities", raced)
    plan = ws.warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                              confirm=2, race=True, merge=False)
    first, second = [m["id"] for m in plan["matches"]]
    assert plan["sources"] == [second] and "card rank 2 of 2" in plan["reason"], plan
    assert plan["confirmed"]["probed_on"] == {first: 4, second: 16}


def test_confirm_is_refused_without_auto(cli_run, tiny_base):
    r = cli_run("compile", "anyone", "--confirm", "2")
    assert r.exit_code != 0 and "--confirm applies to --warm-start auto only" in r.stderr
    r = cli_run("upgrade", "--to", "tiny", "--warm-confirm", "2")
    assert r.exit_code != 0 and "--warm-confirm applies to --warm-start auto only" in r.stderr, (
        r.stderr)
    for flag in ("--race", "--no-race"):
        r = cli_run("compile", "anyone", "--warm-start", "auto", flag)
        assert r.exit_code != 0 and "--race/--no-race applies to --confirm K only" in r.stderr
    r = cli_run("upgrade", "--to", "tiny", "--warm-start", "auto", "--no-warm-race")
    assert r.exit_code != 0 and "applies to --warm-confirm K only" in r.stderr, r.stderr
    r = cli_run("compile", "anyone", "--warm-start", "auto", "--confirm", "1", "--confirm-merge")
    assert r.exit_code != 0 and "--confirm-merge needs --confirm 2 or more" in r.stderr
    r = cli_run("upgrade", "--to", "tiny", "--warm-start", "auto", "--warm-confirm", "1",
                "--warm-confirm-merge")
    assert r.exit_code != 0 and "--warm-confirm-merge needs --warm-confirm 2" in r.stderr, (
        r.stderr)
    # either way of the merge flag means nothing without a confirmation: said, not ignored
    r = cli_run("compile", "anyone", "--warm-start", "auto", "--no-confirm-merge")
    assert r.exit_code != 0 and "--no-confirm-merge applies to --confirm K only" in r.stderr
    r = cli_run("upgrade", "--to", "tiny", "--warm-start", "auto", "--no-warm-confirm-merge")
    assert r.exit_code != 0 and "applies to --warm-confirm K only" in r.stderr, r.stderr


def test_confirm_merge_is_used_only_where_it_fits_better(catalog_two_styles, device):
    """--confirm-merge: the confirmation's choice merged with the next best is probed on the
    same messages; a 'shout' user keeps the shout adapter (the merge is half plain: it fits
    worse, and it is discarded again with the plain one)."""
    from idiolect.catalog.warm_start import warm_start_plan

    url, ids, card = catalog_two_styles
    before = {r["id"] for r in device.conn.execute("SELECT id FROM adapters")}
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                           confirm=2, probe=8)  # the merge is tried by default with confirm 2
    m = plan["confirmed"]["merge"]
    assert m["sources"] == [ids["shout"], ids["plain"]] and m["perplexity"] >= m["against"], m
    assert m["against"] == plan["confirmed"]["perplexity"][ids["shout"]]
    # probed on the race's messages: the same sample, so the bare base's figure again
    assert m["messages"] == plan["confirmed"]["messages"] == 8
    assert m["base_perplexity"] == pytest.approx(plan["confirmed"]["base_perplexity"], rel=1e-4)
    assert plan["decision"] == "pull" and plan["adapter"] == ids["shout"]
    assert "it fits worse" in plan["reason"] and "not used" in plan["reason"]
    left = {r["id"] for r in device.conn.execute("SELECT id FROM adapters")} - before
    assert left == {ids["shout"]}  # the merge and plain are gone again


def test_a_merge_probe_that_fails_stops_the_plan_and_leaves_no_merge(catalog_two_styles,
                                                                     device, monkeypatch):
    """An error while the merge is probed is not taken for "cannot merge" (which keeps the
    choice quietly): it goes on, and the merge leaves the home again."""
    import idiolect.catalog.warm_start as ws
    from idiolect.errors import IdiolectError

    url, ids, card = catalog_two_styles
    real, calls = ws.probe_perplexities, []

    def failing_second(*a, **kw):  # the confirmation's probe runs; the merge's fails
        calls.append(a[3])
        if len(calls) > 1:
            raise IdiolectError("adapter files changed on disk")
        return real(*a, **kw)

    monkeypatch.setattr(ws, "probe_perplexities", failing_second)
    before = {r["id"] for r in device.conn.execute("SELECT id FROM adapters")}
    with pytest.raises(IdiolectError, match="changed on disk"):
        ws.warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                           confirm=2, probe=8, merge=True)
    assert len(calls) == 2 and len(calls[1]) == 1  # the merge alone was being probed
    merged = calls[1][0]
    assert merged not in {r["id"] for r in device.conn.execute("SELECT id FROM adapters")}
    assert merged not in before


@pytest.fixture(scope="module")
def catalog_soup(tmp_path_factory, tiny_model_dir):
    """Two 'plain' adapters trained on different messages, both published to a live server
    (their merge, a "soup", fits a new plain user better than either). Yields the url."""
    from dataclasses import replace

    from idiolect.bases.load import add_local
    from idiolect.catalog.server import create_app, serve_in_thread
    from idiolect.catalog.warm_start import publish_adapter
    from idiolect.compile.run import CompileRequest, compile_adapter
    from conftest import open_home

    root = tmp_path_factory.mktemp("soup")
    url, stop = serve_in_thread(create_app(root / "server", TOKEN))
    with home_at(root / "publisher"):
        home = open_home()
        add_local(home, "tiny", tiny_model_dir)
        for name in ("plaina", "plainb"):
            _user(home.conn, name, "plain")
            m = compile_adapter(home, CompileRequest(name, "tiny", recipe=replace(
                _recipe(), epochs=3, lr=1e-2)))
            publish_adapter(home, m.id, url, TOKEN, card_source="training", embedder="hash",
                            limit=16, cfg=_gen())
    yield url
    stop()


def test_confirm_merge_starts_from_two_close_neighbours_merged(catalog_soup, device):
    """Two adapters of the same style trained on different messages: their merge (a "soup")
    fits a new user of that style better than the confirmation's choice, and --confirm-merge
    starts from it; both pulled adapters stay (the merge's parent and its other source)."""
    from idiolect import adapters
    from idiolect.catalog.warm_start import card_for_user, warm_start_plan

    _user(device.conn, "newplain", "plain")
    card = card_for_user(device, "newplain", "tiny", limit=16, cfg=_gen(), embedder="hash")
    plan = warm_start_plan(device, "newplain", "tiny", catalog_soup, recipe=_recipe(),
                           card=card, confirm=2, probe=8, race=False, merge=True)
    m = plan["confirmed"]["merge"]
    assert m["perplexity"] < m["against"], plan["confirmed"]
    assert plan["decision"] == "merge" and plan["sources"] == m["sources"]
    assert "the merge is used" in plan["reason"]
    merged = adapters.get(device.conn, plan["adapter"])
    assert merged["user"] == "newplain" and merged["state"] == "candidate"
    assert plan["confirmed"]["discarded"] == []  # both rest under the merge


def test_a_merge_that_wins_says_which_of_the_recipes_modules_start_fresh(catalog_soup, device):
    """The soup's adapters have LoRA on the attention only; a recipe with the MLP too starts
    from their merge, and the plan says the MLP's pairs start fresh (as a single pull does)."""
    from dataclasses import replace

    from idiolect.catalog.warm_start import card_for_user, warm_start_plan

    recipe = replace(_recipe(), target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"])
    _user(device.conn, "newplain", "plain")
    card = card_for_user(device, "newplain", "tiny", limit=16, cfg=_gen(), embedder="hash")
    plan = warm_start_plan(device, "newplain", "tiny", catalog_soup, recipe=recipe, card=card,
                           confirm=2, probe=8, race=False, merge=True)
    assert plan["decision"] == "merge", plan["reason"]
    assert plan["reason"].endswith("the merge has no LoRA on gate_proj, up_proj, down_proj:"
                                   " those start fresh"), plan["reason"]


@pytest.mark.parametrize("flag", ["--confirm-merge", None, "--no-confirm-merge"])
def test_compile_confirm_merge_compiles_from_the_merge(catalog_soup, device, cli_run, flag):
    """`idiolect compile --warm-start auto --confirm 2` (--confirm-merge is its default) hands
    the option down: the candidate it compiles starts from the merge (its parent's manifest is a
    merge); --no-confirm-merge starts it from the confirmation's choice."""
    from idiolect import adapters
    from idiolect.manifest import Manifest

    _user(device.conn, "newplain", "plain")
    recipe = device.root / "recipe.json"
    recipe.write_text(json.dumps(RECIPE | {"epochs": 1}))
    r = cli_run("compile", "newplain", "--base", "tiny", "--recipe", recipe, "--warm-start",
                "auto", "--catalog-url", catalog_soup, "--confirm", "2", "--no-race",
                *([flag] if flag else []), "--candidate", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    cand = Manifest.read(Path(adapters.get(device.conn, out["id"])["path"]))
    parent = Manifest.read(Path(adapters.get(device.conn, cand.parent)["path"]))
    if flag == "--no-confirm-merge":
        assert "merged with" not in r.stderr and not (parent.warm_start or {}).get("merge")
        return
    assert "the merge is used" in r.stderr, r.stderr
    assert len(parent.warm_start["merge"]["sources"]) == 2


def test_bench_start_merges_the_two_that_fit_the_probe_best(catalog_two_styles, device):
    """bench/xpert.py --start merged: the confirmation's two best candidates pulled again and
    merged with equal weights at the recipe's rank; the merge probed on the same messages."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import xpert
    from idiolect import adapters
    from idiolect.catalog.warm_start import warm_start_plan
    from idiolect.manifest import Manifest

    url, ids, card = catalog_two_styles
    args, by_id = argparse.Namespace(base="tiny", probe=8), {v: k for k, v in ids.items()}
    one = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                          confirm=1, probe=8)
    with pytest.raises(SystemExit, match="two confirmed candidates"):
        xpert.merge_best_two(device, "newshout", args, url, one, by_id, _recipe())
    plan = warm_start_plan(device, "newshout", "tiny", url, recipe=_recipe(), card=card,
                           confirm=2, probe=8, merge=False)  # the race: plain out after 2
    ppl = plan["confirmed"]["perplexity"]
    m = xpert.merge_best_two(device, "newshout", args, url, plan, by_id, _recipe())
    assert m["styles"] == ["shout", "plain"] and m["weights"] == [0.5, 0.5]
    # probed again together on all 8 messages: the race's figure for shout, not plain's on 2
    assert m["sources_perplexity"][0] == pytest.approx(ppl[ids["shout"]], rel=1e-4)
    assert m["sources_perplexity"][1] != pytest.approx(ppl[ids["plain"]], rel=1e-4)
    assert m["sources_messages"] == [8, 8] and m["confirmation"] == "pull"
    assert m["base_perplexity"] == pytest.approx(plan["confirmed"]["base_perplexity"], rel=1e-4)
    assert m["messages"] == 8  # the same probe messages as the race's
    merged = Manifest.read(Path(adapters.get(device.conn, m["adapter"])["path"]))
    assert merged.user == "newshout" and merged.recipe["rank"] == _recipe().rank
    sources = merged.warm_start["merge"]["sources"]
    assert len(sources) == 2 and merged.warm_start["merge"]["weights"] == [0.5, 0.5]
    assert all(adapters.get(device.conn, i)["user"] == "newshout" for i in sources)
    assert m["perplexity"] > 0 and m["perplexity"] not in m["sources_perplexity"]
