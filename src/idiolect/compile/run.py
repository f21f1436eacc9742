"""compile(user, base, recipe) end to end: vault snapshot -> train -> PEFT folder + manifest.

The result is always a *candidate*: only the build pipeline (``idiolect.pipeline``) evaluates it,
gates it and makes it active."""

from __future__ import annotations

import enum
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import adapters
from ..bases import load as bases
from ..errors import IdiolectError, InputError
from ..home import Home, atomic_write_json, new_id, transaction, utcnow
from ..manifest import Manifest, package_versions
from ..vault import store
from .prompts import encode
from .retrieve import recipe_shots
from .recipe import Recipe, for_base
from .train import peak_rss_mb, release_memory, train

Log = Callable[[str], None]


class Resume(enum.Enum):
    """What to do with an interrupted compile of the same (user, base).

    ``NO``: compile anew. ``LAST``: continue it with its own recipe, examples and parent; an
    error if there is none (``idiolect compile --resume``). ``IF_SAME``: continue it only if it
    was started with exactly this request (examples, parent, recipe, snapshot), else compile
    anew (a rerun of an upgrade).
    """
    NO = "no"
    LAST = "last"
    IF_SAME = "if-same"


@dataclass
class CompileRequest:
    user: str
    base: str | None = None
    examples: int | None = None
    recipe: Recipe | None = None
    parent: str | None = None     # adapter id to start from (warm start)
    resume: Resume = Resume.NO
    stop_after: int | None = None  # end early after N steps (simulated interruption)


def _unfinished_run(conn: sqlite3.Connection, user: str, base: str) -> sqlite3.Row | None:
    """The latest running or interrupted compile of (user, base): what ``--resume`` continues.
    Looked up once per compile, so the recipe and the run row always come from the same run."""
    return conn.execute(
        "SELECT id, config FROM runs WHERE user=? AND base=? AND status IN"
        " ('running', 'interrupted') ORDER BY created_at DESC, rowid DESC LIMIT 1", (user, base)
    ).fetchone()


def _same_request(unfinished: sqlite3.Row, req: CompileRequest, recipe: Recipe,
                  snapshot: str) -> bool:
    cfg = json.loads(unfinished["config"])
    old = cfg.get("recipe")  # recorded by an older idiolect: fields added since at their defaults
    old = Recipe.from_dict(old).to_dict() if isinstance(old, dict) else old
    return (cfg.get("examples"), cfg.get("parent"), old, cfg.get("snapshot")) == (
        req.examples, req.parent, recipe.to_dict(), snapshot)


def _open_run(conn: sqlite3.Connection, req: CompileRequest, base: str, recipe: Recipe,
              snapshot: str, unfinished: sqlite3.Row | None) -> tuple[str, bool]:
    """A new run row, or the interrupted one to resume. Returns (run id, resuming)."""
    config = {"user": req.user, "base": base, "examples": req.examples, "parent": req.parent,
              "snapshot": snapshot, "recipe": recipe.to_dict()}
    if req.resume is Resume.IF_SAME and unfinished is not None and not _same_request(
            unfinished, req, recipe, snapshot):
        unfinished = None
    if req.resume is Resume.LAST and unfinished is None:
        raise IdiolectError(f"no interrupted compile of {req.user!r} on {base!r} to resume")
    if unfinished is not None:
        old = json.loads(unfinished["config"])
        if old["snapshot"] != snapshot:
            raise IdiolectError(
                f"run {unfinished['id']}: the training set changed since it started; compile anew"
            )
        _set_run(conn, unfinished["id"], "running")  # running again, as a new run would be
        return unfinished["id"], True
    run_id = new_id()
    with transaction(conn):
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,NULL)",
                     (run_id, req.user, base, "running", json.dumps(config), utcnow(), utcnow()))
    return run_id, False


def _set_run(conn, run_id: str, status: str, adapter: str | None = None) -> None:
    with transaction(conn):
        conn.execute("UPDATE runs SET status=?, updated_at=?, adapter=? WHERE id=?",
                     (status, utcnow(), adapter, run_id))


def resolve_recipe(req: CompileRequest, unfinished: sqlite3.Row | None) -> Recipe:
    """The request's recipe; on --resume, the interrupted run's own recipe (and its examples
    and parent, so the resumed run trains on what it started with)."""
    if req.resume is Resume.LAST and unfinished is not None:
        cfg = json.loads(unfinished["config"])
        req.examples, req.parent = cfg["examples"], cfg["parent"]
        return Recipe.from_dict(cfg["recipe"]).resolved()
    return (req.recipe or for_base(req.base)).resolved()


def compile_adapter(home: Home, req: CompileRequest, log: Log | None = None,
                    progress=None) -> Manifest:
    """Compile one candidate adapter; returns its manifest. ``log`` gets one-line notes,
    ``progress`` a dict per optimizer step."""
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    conn = home.conn
    store.require_user(conn, req.user)
    ref = bases.resolve(home, req.base)
    unfinished = (_unfinished_run(conn, req.user, ref.name)
                  if req.resume is not Resume.NO else None)
    recipe = resolve_recipe(req, unfinished)
    if req.parent:
        _check_parent(conn, req.parent, recipe, ref)
    ev = store.require_eval_set(conn, req.user)
    msgs, snapshot = store.training_messages(conn, req.user, req.examples, seed=recipe.seed)
    run_id, resuming = _open_run(conn, req, ref.name, recipe, snapshot, unfinished)
    run_dir = home.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"run": run_id, "user": req.user, "base": ref.name, "examples": len(msgs),
                "parent": req.parent, "snapshot": snapshot, "recipe": recipe.to_dict()}
    atomic_write_json(run_dir / "config.json", resolved)
    log("config " + json.dumps(resolved, sort_keys=True))

    try:
        model, tok, fp, examples, prep = _prepare(ref, recipe, msgs, req, log, home)
        peft_model = _wrap(model, recipe, req.parent, conn, fp)
        state = train(peft_model, examples, recipe, tok.pad_token_id, run_dir, resume=resuming,
                      progress=progress, stop_after=req.stop_after)
    except KeyboardInterrupt:
        _set_run(conn, run_id, "interrupted")
        raise
    except BaseException:
        _set_run(conn, run_id, "failed")
        raise

    adapter_id = new_id()
    t_save = time.perf_counter()
    manifest = Manifest(
        id=adapter_id, user=req.user, created_at=utcnow(), run=run_id,
        base={"name": ref.name, "fingerprint": fp},
        snapshot={"digest": snapshot, "messages": len(msgs), "examples": len(examples)},
        eval_set={"digest": ev["digest"], "size": ev["size"]},
        recipe=recipe.to_dict(), parent=req.parent,
        metrics={"train_loss_first": state.losses[0] if state.losses else None,
                 "train_loss_last": state.losses[-1] if state.losses else None,
                 "train_loss_curve": state.losses},
        tokens={"seen": state.tokens_seen, "body": state.body_tokens, "steps": state.step,
                "resumed_from_step": state.resumed_from},
        peak_rss_mb=round(peak_rss_mb(), 1), packages=package_versions())
    with adapters.staging(home, adapter_id) as staging:
        _write_peft(peft_model, staging, ref.name, fp)
        manifest.files = adapters.file_digests(staging)
        manifest.timings = {
            **prep, "train_s": round(state.train_seconds, 2),
            "save_s": round(time.perf_counter() - t_save, 2),
            "total_s": round(time.perf_counter() - t0, 2),
            "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1)}
        manifest.write(staging)
        adapters.install(home, staging, manifest)
    _set_run(conn, run_id, "done", adapter_id)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    del model, peft_model  # the gate that follows evaluates in this process: not on top of
    release_memory()       # training's residue (bench/README.md, "The gate's evaluation")
    return manifest


def _prepare(ref, recipe: Recipe, msgs, req: CompileRequest, log: Log, home: Home | None = None):
    """Load the base and encode the training examples (with ``recipe.orpo``, each with the bare
    base's own body for its prompt: generated once per base, prompts and seed, cached in
    ``home``)."""
    import torch

    torch.set_num_threads(recipe.threads or max(1, torch.get_num_threads()))
    t_load = time.perf_counter()
    model, tok = bases.load(ref, progress=log, dtype=recipe.base_dtype)
    fp = bases.read_fingerprint(ref)
    load_s = time.perf_counter() - t_load
    log(f"loaded base {ref.name} in {load_s:.1f}s")
    shots = recipe_shots(tok, recipe, msgs, msgs, training=True)
    room = recipe.example_tokens - recipe.max_tokens
    examples = [encode(tok, m.subject, m.to, m.body, recipe.max_tokens, shots=sh, shot_room=room)
                for m, sh in zip(msgs, shots)]
    timings = {"load_s": round(load_s, 2)}
    if recipe.orpo:
        timings["orpo_generation_s"] = _rejected(home, ref, recipe, msgs, shots, examples, model,
                                                 tok, log)
    examples = [e for e in examples if e.body_tokens > 0]
    if not examples:
        raise InputError(f"user {req.user!r}: no training example has body tokens")
    return model, tok, fp, examples, timings


#: new tokens of the bare base's body for an ORPO pair (a body cut there gets no end marker)
ORPO_BODY_TOKENS = 128


def _rejected(home, ref, recipe: Recipe, msgs, shots, examples, model, tok, log) -> float:
    """Give each example the bare base's own body for its prompt (the shots the prompt kept), as
    ``rejected_ids``; generated once per base, prompts, seed and dtype, cached in ``home``.
    Returns the seconds it took (about 0 when cached)."""
    from ..generate import GenerationConfig, base_generations

    if home is None:
        raise ValueError("orpo needs the home (its base generations are cached there)")
    t_gen = time.perf_counter()
    kept = [sh[:e.shots] for e, sh in zip(examples, shots)]
    bodies = base_generations(home, ref, [(m.subject, list(m.to), sh)
                                          for m, sh in zip(msgs, kept)],
                              GenerationConfig(max_new_tokens=ORPO_BODY_TOKENS, batch_size=16,
                                               seed=recipe.seed), model=model, tok=tok)
    seconds = time.perf_counter() - t_gen
    log(f"orpo: the bare base's bodies for {len(msgs)} prompts in {seconds:.0f}s (cached after"
        " the first time)")
    for e, m, sh, body in zip(examples, msgs, kept, bodies):
        r = encode(tok, m.subject, m.to, body, recipe.max_tokens, shots=sh)
        ids = tok(body, add_special_tokens=False)["input_ids"]
        if len(ids) >= ORPO_BODY_TOKENS - 1:  # cut by the cap, not ended by the base: no end
            r.input_ids = r.input_ids[:r.prompt_len] + ids[:r.body_tokens]  # marker after it
        e.rejected_ids = r.input_ids  # the same prompt as the example's, another body
    return round(seconds, 2)


def _check_parent(conn, parent: str, recipe: Recipe, ref) -> None:
    """Refuse, before any work, a parent adapter whose LoRA cannot seed ``recipe``: the
    catalog's rule (``catalog.match.incompatible``). Another rank would not load; another
    alpha would load at the wrong scale (PEFT scales B @ A by this recipe's alpha / rank).
    A parent of another base is refused here when the base is cached already (its
    fingerprint is known without loading), else once the base is loaded (``_wrap``)."""
    from ..catalog.match import incompatible
    from ..manifest import Manifest

    row = adapters.get(conn, parent)
    manifest = Manifest.read(Path(row["path"]))
    fp = bases.cached_fingerprint(ref)
    if fp and manifest.base_digest != fp["digest"]:
        raise IdiolectError(f"adapter {parent} was compiled for another base"
                            f" ({manifest.base_name}): cannot warm-start {ref.name} from it")
    why = incompatible(manifest.recipe, recipe, manifest.base["fingerprint"].get("num_layers"))
    if why:
        raise IdiolectError(f"adapter {parent} cannot seed this recipe: {why}")


def _wrap(model, recipe: Recipe, parent: str | None, conn, fp: dict):
    """Inject LoRA into ``model``; from a parent adapter's weights when warm-starting."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.manual_seed(recipe.seed)
    n_layers = model.config.num_hidden_layers
    layers = (list(range(n_layers - recipe.lora_layers, n_layers))
              if 0 < recipe.lora_layers < n_layers else None)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.target_modules), task_type="CAUSAL_LM",
                        layers_to_transform=layers)
    peft_model = get_peft_model(model, config)
    if parent:
        row = adapters.get(conn, parent)
        folder = Path(row["path"])
        adapters.verify_files(folder)
        if row["base_digest"] != fp["digest"]:
            raise IdiolectError(f"adapter {parent} was compiled for another base: cannot warm-start")
        result = set_peft_model_state_dict(peft_model, load_file(str(folder / adapters.ADAPTER_FILES[0])))
        missing = [k for k in getattr(result, "unexpected_keys", [])]
        if missing:
            raise IdiolectError(f"adapter {parent}: {len(missing)} tensors do not fit this recipe")
    return peft_model


def _write_peft(peft_model, folder: Path, base_name: str, fp: dict) -> None:
    """The PEFT files, naming the base by idiolect name + fingerprint (never a local path)."""
    cfg = peft_model.peft_config["default"]
    cfg.base_model_name_or_path = f"idiolect/{base_name}"
    cfg.revision = fp["digest"][:16]
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)
