"""Base change: for every user, diagnose transport -> recompile -> evaluate -> gate -> promote.

The old adapter is never transported: it is diagnosed (recorded in ``transports``), and a new
adapter is compiled from the user's vault on the new base, replaying the old manifest's recipe
(``replay_recipe``). The candidate is scored on the frozen eval set and must pass the gate
(``GateConfig``) to be promoted, in one transaction; otherwise it is marked ``rejected`` with the
reason. The old adapter on the old base is left as it was; on the new base the previous active
adapter, if any, is retired (``idiolect adapter rollback`` restores it).

A fleet run is recorded (``fleets``, ``fleet_users``) with one row per user, written by the worker
that upgrades that user: a killed run is resumed by running the same upgrade again, which skips
users already promoted or rejected for the same old adapter and target base.

Both papers at once (``WarmStartConfig``, ``--warm-start auto``): each user's recompile may start
from the catalog adapter compiled for the new base whose card is nearest the user's own (pulled,
or two merged), falling back to the bare base when none fits. The user's report records the
decision (``warm_start``: adapter, catalog sources, score, reason, seconds) beside the compile's
steps, tokens and loss curve, so that a bench can compare the compute with a plain recompile.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import adapters, transport
from .bases import load as bases
from .catalog import EMBEDDERS
from .catalog.protocol import CARD_SETTINGS
from .compile.recipe import Recipe, for_base
from .errors import IdiolectError, InputError
from .evaluate.run import EvalConfig
from .fleet import records
from .fleet.executors import Executor, LocalExecutor, executor_label
from .fleet.records import fleet_status, plan  # noqa: F401  (re-exported)
from .home import Home, transaction, utcnow
from .manifest import Manifest
from .pipeline import GateConfig, promote

WARM_START_MODES = ("none", "auto")


@dataclass
class WarmStartConfig:
    """Where each user's recompile on the new base starts: the bare base, or (``auto``) the best
    catalog adapter compiled for the new base, as ``idiolect compile --warm-start auto`` does."""

    mode: str = field(default="none", metadata={
        "help": "none: the bare base; auto: the nearest catalog adapter (pulled, or two merged)"})
    catalog_url: str | None = field(default=None, metadata={
        "help": "catalog for auto (resolved once by the driver, so remote workers use the same)"})
    threshold: float = field(default=0.5, metadata={
        "help": "lowest match score pulled as is; below it two are merged, or the base is used"})
    texts: int = field(default=CARD_SETTINGS.texts, metadata={
        "help": "training messages the user's card is computed from (on the worker)"})
    card_tokens: int = field(default=CARD_SETTINGS.tokens, metadata={
        "help": "tokens the bare base writes per prompt for the card (match the catalog's)"})
    embedder: str = field(default=CARD_SETTINGS.embedder, metadata={
        "help": "card embedding: auto, minilm or hash (as the catalog's cards were made)"})
    confirm: int = field(default=0, metadata={
        "help": "pull the top K matches and keep the one with the lowest perplexity on a few of"
                " the user's training messages (0: the card alone decides)"})
    race: bool = field(default=True, metadata={
        "help": "with confirm: probe by successive halving (54-75% of the forward passes for"
                " 12 down to 2 candidates; the base sees every message); False: every candidate"
                " on every message"})
    merge: bool | None = field(default=None, metadata={
        "help": "with confirm >= 2: also merge the chosen match with the next best, and use the"
                " merge when it fits the probe messages better (None: on where confirm >= 2)"})

    def __post_init__(self) -> None:
        if self.mode not in WARM_START_MODES:
            raise InputError(f"--warm-start: {self.mode!r} is not one of"
                             f" {', '.join(WARM_START_MODES)}")
        if self.embedder not in EMBEDDERS:
            raise InputError(f"warm start: unknown embedder {self.embedder!r}")
        if self.confirm < 0:
            raise InputError(f"warm start: --warm-confirm must be at least 0, got {self.confirm}")
        from .catalog.warm_start import merge_default

        self.merge = merge_default(self.merge, self.confirm,
                                   ("warm start: --warm-confirm-merge", "--warm-confirm"))
        if self.texts < 1 or self.card_tokens < 1:
            raise InputError(f"warm start: texts and card_tokens must be at least 1, got"
                             f" {self.texts} and {self.card_tokens}")


@dataclass
class UserJob:
    """Everything one worker needs to upgrade one user (picklable; the home is explicit)."""

    home: str
    fleet: str
    user: str
    old_adapter: str
    to_base: str
    examples: int | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: int = 0
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)


class UserFailed(IdiolectError):
    """One user's upgrade failed (the message is one line); the others go on."""


# ------------------------------------------------------------------------------ recipe, gate
def replay_recipe(old: dict, target_fp: dict, threads: int = 0,
                  source_fp: dict | None = None, target_base: str | None = None
                  ) -> tuple[Recipe, list[str]]:
    """The old manifest's recipe for the new base, and what had to change (one note each).

    Rank, alpha, learning rate, epochs, token budgets and seed are kept: LoRA's update scale is
    alpha/rank whatever the width. Target modules are kept where the new base has them; when none
    remains, the attention projections it does have are used. ``lora_layers`` (adapt the top N
    layers) keeps its share of the depth when the new base (``target_fp``) has another number of
    layers than the old (``source_fp``). Threads follow the executor, and the frozen base's
    dtype is the new base's own (``for_base(target_base)``: the old one was chosen for another
    base, maybe on another machine), with a note when it differs.
    """
    recipe = Recipe.from_dict(dict(old), source="old manifest recipe")
    names = list(target_fp.get("modules", {}))
    present = lambda m: any(n == m or n.endswith("." + m) for n in names)  # noqa: E731
    keep = [m for m in recipe.target_modules if present(m)]
    notes = []
    if len(keep) < len(recipe.target_modules):
        dropped = [m for m in recipe.target_modules if m not in keep]
        notes.append(f"target modules {dropped} do not exist on the new base: dropped")
    if not keep:
        keep = [m for m in ("q_proj", "k_proj", "v_proj", "o_proj") if present(m)]
        if not keep:
            raise IdiolectError("the new base has none of the recipe's target modules nor"
                                " attention projections to adapt")
        notes.append(f"adapting {keep} instead")
    recipe.target_modules = keep
    top = getattr(recipe, "lora_layers", 0)
    old_n, new_n = (source_fp or {}).get("num_layers"), target_fp.get("num_layers")
    if top and old_n and new_n and old_n != new_n:
        scaled = max(1, round(top * new_n / old_n))
        recipe.lora_layers = 0 if scaled >= new_n else scaled
        notes.append(f"lora_layers: top {top} of {old_n} layers -> top"
                     f" {recipe.lora_layers or new_n} of {new_n} (same share of the depth)")
    recipe.threads = threads
    if target_base is not None:
        dtype = for_base(target_base).base_dtype
        if dtype != recipe.base_dtype:
            notes.append(f"base_dtype: {recipe.base_dtype} -> {dtype} (the new base's own)")
        recipe.base_dtype = dtype
    return recipe, notes


# ------------------------------------------------------------------------------ one user
def upgrade_user(job: UserJob) -> dict:
    """Upgrade one user (top-level, picklable: runs in a worker that opens the job's home)."""
    home = Home.open(job.home)
    try:
        return _upgrade_user(home, job)
    except Exception as e:
        reason = str(e) if isinstance(e, IdiolectError) else transport.one_line(e)
        records.set_row(home.conn, job.fleet, job.user, status="failed", reason=reason,
                        finished_at=utcnow())
        raise UserFailed(reason) from None
    finally:
        home.close()


def _upgrade_user(home: Home, job: UserJob) -> dict:
    from .compile.run import CompileRequest, Resume, compile_adapter

    t0 = time.perf_counter()
    conn = home.conn
    records.set_row(conn, job.fleet, job.user, status="running", started_at=utcnow(), reason=None)
    old = adapters.get(conn, job.old_adapter)
    old_manifest = Manifest.read(Path(old["path"]))
    diag = transport.diagnose(home, old["id"], job.to_base)
    records.set_row(conn, job.fleet, job.user, transport=diag["id"])
    fp = bases.read_fingerprint(bases.resolve(home, job.to_base))
    recipe, notes = replay_recipe(old_manifest.recipe, fp, threads=job.threads,
                                  source_fp=old_manifest.base.get("fingerprint"),
                                  target_base=job.to_base)
    examples = job.examples if job.examples is not None else _old_examples(conn, old_manifest)
    warm = warm_start(home, job, recipe)
    manifest = compile_adapter(home, CompileRequest(user=job.user, base=job.to_base,
                                                    examples=examples, recipe=recipe,
                                                    parent=warm["adapter"],
                                                    resume=Resume.IF_SAME))
    cand = manifest.id
    records.set_row(conn, job.fleet, job.user, candidate=cand)
    t_eval = time.perf_counter()
    decision = promote(home, cand, against=old["id"], eval_cfg=job.eval, gate_cfg=job.gate)
    if decision.passed is None:
        raise UserFailed(decision.reason)
    status, reason, result = decision.status, decision.reason, decision.evaluation
    report = {
        "user": job.user, "status": status, "reason": reason, "old_adapter": old["id"],
        "old_base": old["base"], "to_base": job.to_base, "candidate": cand,
        "transport": {k: diag[k] for k in ("id", "verdict", "message")},
        "recipe": recipe.to_dict(), "recipe_notes": notes,
        "examples": manifest.snapshot["messages"],
        "warm_start": warm, "compile": _compile_cost(manifest),
        "gate": {k: v for k, v in decision.record().items()
                 if k in ("passed", "against", "bar", "reasons", "candidate", "old",
                          "bar_source", "bar_adapter", "protocol")},
        "scores": {"candidate": result["adapter_scores"], "base": result["base_scores"],
                   "calibration": {m: {k: result["calibration"][m][k]
                                       for k in ("ceiling", "floor")}
                                   for m in ("fingerprint_distance", "authorship_probability")}},
        "novelty": {k: result["novelty"][k] for k in ("verbatim", "flagged", "max_span",
                                                      "copied_ngram_share")},
        "seconds": {"warm_start": warm["seconds"], "compile": manifest.timings["total_s"],
                    "evaluate": round(time.perf_counter() - t_eval, 2),
                    "total": round(time.perf_counter() - t0, 2)},
    }
    records.set_row(conn, job.fleet, job.user, status=status, reason=reason,
                    result=json.dumps(report), finished_at=utcnow())
    return report


def warm_start(home: Home, job: UserJob, recipe: Recipe) -> dict:
    """Where this user's recompile starts, and why: ``{mode, decision, adapter (the parent id or
    None), sources, score, threshold, reason, catalog, seconds}``.

    With ``auto`` the card of the user's own data is computed here, on the worker, and only the
    card is sent. A catalog error (an adapter that fails its digests, a match refused) is not a
    failed user: the recompile starts from the bare base and the reason says why."""
    cfg = job.warm_start
    if cfg.mode == "none":
        return {"mode": "none", "decision": "none", "adapter": None, "sources": [], "score": None,
                "threshold": None, "reason": "warm start off: from the bare base",
                "catalog": None, "seconds": 0.0}
    from .catalog.warm_start import warm_start_plan

    if job.threads:  # the card's generations share the cores like the compile does
        import torch

        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    out = {"mode": cfg.mode, "threshold": cfg.threshold, "catalog": cfg.catalog_url}
    try:
        plan = warm_start_plan(home, job.user, job.to_base, cfg.catalog_url, recipe=recipe,
                               threshold=cfg.threshold, limit=cfg.texts, embedder=cfg.embedder,
                               cfg=CARD_SETTINGS.generation(tokens=cfg.card_tokens),
                               confirm=cfg.confirm, race=cfg.race, merge=cfg.merge)
    except IdiolectError as e:
        out |= {"decision": "none", "adapter": None, "sources": [], "score": None,
                "reason": f"catalog error: {e}"}
    else:
        out |= {k: plan[k] for k in ("decision", "adapter", "sources", "score", "reason",
                                     "confirmed") if k in plan}
    return out | {"seconds": round(time.perf_counter() - t0, 2)}


def _compile_cost(manifest: Manifest) -> dict:
    """What the recompile cost and reached, for comparing a warm start with a plain recompile
    (the loss curve gives the step at which a target loss is first reached)."""
    m, t = manifest.metrics, manifest.tokens
    return {"parent": manifest.parent, "steps": t["steps"], "tokens": t["seen"],
            "train_s": manifest.timings["train_s"], "loss_first": m["train_loss_first"],
            "loss_last": m["train_loss_last"], "loss_curve": m["train_loss_curve"]}


def _old_examples(conn: sqlite3.Connection, manifest: Manifest) -> int | None:
    """How many messages the old compile asked for (None: the whole vault, as it is now)."""
    row = conn.execute("SELECT config FROM runs WHERE id=?", (manifest.run,)).fetchone()
    if row:
        return json.loads(row["config"]).get("examples")
    return manifest.snapshot.get("messages")


# ------------------------------------------------------------------------------ the fleet
def upgrade(home: Home, to_base: str, users: list[str] | None = None,
            examples: int | None = None, gate: GateConfig | None = None,
            executor: Executor | None = None, eval_config: EvalConfig | None = None,
            redo: bool = False, from_base: str | None = None,
            warm: WarmStartConfig | None = None, log=None) -> dict:
    """Recompile every user with an active adapter on another base (``from_base`` only, when
    given; or just ``users``) for ``to_base``. One user's failure is reported and never stops
    the others. Returns the report: ``fleet``, ``resumed``, ``users`` (one entry each,
    ``status`` promoted / rejected / failed / skipped with its ``reason``), ``summary``
    (counts) and ``seconds``. ``warm`` (default: none) picks where each recompile starts."""
    log = log or (lambda s: None)
    gate_cfg = gate or GateConfig()
    eval_cfg = eval_config or EvalConfig()
    warm_cfg = _reachable_catalog(warm or WarmStartConfig())
    executor = executor or LocalExecutor()
    t0 = time.perf_counter()
    conn = home.conn
    ref = bases.resolve(home, to_base)
    bases.read_fingerprint(ref)  # dequantize/cache once here, not in every worker
    if from_base is not None:
        from_base = bases.resolve(home, from_base).name
    todo = plan(conn, ref.name, users, redo=redo, from_base=from_base)
    config = {"to_base": ref.name, "from_base": from_base, "users": users, "examples": examples,
              "redo": redo, "gate": asdict(gate_cfg), "eval": asdict(eval_cfg),
              "warm_start": asdict(warm_cfg), "executor": executor.describe()}
    fleet, resumed = records.open_fleet(conn, ref.name, config)
    log("config " + json.dumps(config, sort_keys=True))
    log(f"fleet {fleet}{' (resumed)' if resumed else ''}: upgrade to {ref.name},"
        f" {sum(not p['skip'] for p in todo)} of {len(todo)} users"
        f" ({executor_label(executor.describe())})")
    entries: dict[str, dict] = {}
    jobs = []
    for p in todo:
        if p["skip"]:
            entries[p["user"]] = {"user": p["user"], "status": "skipped", "reason": p["skip"],
                                  "old_adapter": p["old_adapter"], "old_base": p["old_base"]}
            continue
        recovered = records.recover(conn, fleet, p["user"])
        if recovered:
            entries[p["user"]] = recovered
            continue
        with transaction(conn):
            conn.execute("INSERT INTO fleet_users (fleet, user, old_adapter, old_base, status)"
                         " VALUES (?,?,?,?, 'pending') ON CONFLICT (fleet, user) DO UPDATE SET"
                         " old_adapter=excluded.old_adapter, old_base=excluded.old_base,"
                         " status='pending', candidate=NULL, reason=NULL, finished_at=NULL",
                         (fleet, p["user"], p["old_adapter"], p["old_base"]))
        jobs.append(UserJob(home=str(home.root), fleet=fleet, user=p["user"], old_adapter=p["old_adapter"],
                            to_base=ref.name, examples=examples, gate=gate_cfg, eval=eval_cfg,
                            threads=executor.threads_per_job, warm_start=warm_cfg))
    try:
        for i, (job, res) in enumerate(executor.map(upgrade_user, jobs), 1):
            if isinstance(res, BaseException):
                reason = str(res) if isinstance(res, IdiolectError) else transport.one_line(res)
                with transaction(conn):  # a worker that died could not record it itself
                    conn.execute("UPDATE fleet_users SET status='failed', reason=?, finished_at=?"
                                 " WHERE fleet=? AND user=? AND status NOT IN ('promoted',"
                                 " 'rejected')", (reason, utcnow(), fleet, job.user))
                res = {"user": job.user, "status": "failed", "reason": reason,
                       "old_adapter": job.old_adapter}
            entries[job.user] = res
            log(f"[{i}/{len(jobs)}] {job.user}: {res['status']}: {res['reason']}")
    except BaseException:
        records.close_fleet(conn, fleet, "interrupted", {})
        raise
    ordered = [entries[p["user"]] for p in todo]
    summary = {s: sum(e["status"] == s for e in ordered)
               for s in ("promoted", "rejected", "failed", "skipped")}
    records.close_fleet(conn, fleet, "partial" if summary["failed"] else "done", summary)
    return {"fleet": fleet, "to_base": ref.name, "resumed": resumed,
            "executor": executor.describe(), "users": ordered, "summary": summary,
            "seconds": round(time.perf_counter() - t0, 2)}


def _reachable_catalog(cfg: WarmStartConfig) -> WarmStartConfig:
    """With ``auto``: the catalog URL resolved here (flag, else IDIOLECT_CATALOG_URL, else the
    default) and checked once, so that an unreachable catalog is one clean error before any
    user starts rather than every user quietly starting from the bare base."""
    if cfg.mode == "none":
        return cfg
    from dataclasses import replace

    from .catalog.client import CatalogClient

    client = CatalogClient(cfg.catalog_url, timeout=30.0)
    client.health()
    return replace(cfg, catalog_url=client.url)
