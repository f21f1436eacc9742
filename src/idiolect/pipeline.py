"""The build pipeline: build -> candidate -> evaluate -> gate -> promote | reject.

This is the only road to an active adapter. ``idiolect compile``, ``idiolect upgrade`` (a
recompile on a new base), a warm start, ``catalog merge --promote`` and ``catalog pull
--promote`` all end here, and ``idiolect adapter promote`` runs the same gate on a candidate::

    build(home, CompileRequest)              compile/run.compile_adapter -> a candidate
      -> promote(home, candidate_id)         checks, then
           evaluate/run.evaluate             the candidate on the user's frozen eval set
           _bar                              the bar: the adapter it would replace (stored
                                             scores under the same protocol, else scored now),
                                             or the calibrated floor for a user's first adapter
           gate                              pure: pass or refuse, with reasons
           adapters.decide                   one transaction: active (the old one retired) or
                                             rejected; the decision stored in the manifest

A gate that cannot run (no frozen eval set, a cohort of fewer than two users) leaves the
candidate a candidate and says why. ``force=True`` promotes whatever the gate says and records
that it was forced. Every decision (scores, bar, reasons, forced) is stored with the adapter
(manifest ``gate``, the row's ``gate``) and shown by ``idiolect adapter show``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import adapters
from .bases import load as bases
from .errors import IdiolectError, InputError, NotFound
from .home import Home, utcnow
from .manifest import Manifest
from .vault import store

Log = Callable[[str], None]


@dataclass
class GateConfig:
    """The bar a candidate must pass on the frozen eval set to replace the active adapter."""

    authorship_tol: float = field(default=0.0, metadata={
        "help": "candidate authorship probability may be this much below the old adapter's,"
                " beyond the noise allowance"})
    distance_tol: float = field(default=0.0, metadata={
        "help": "candidate fingerprint distance may be this much above the old adapter's,"
                " beyond the noise allowance"})
    z: float = field(default=1.645, metadata={
        "help": "refuse only when worse by more than z standard errors of the difference"
                " (bootstrap over eval prompts, the two scores' errors combined as if"
                " independent: at least as lenient as a one-sided 95% test)"})
    floor_margin: float = field(default=0.0, metadata={
        "help": "with no old scores: how far beyond the calibrated floor both metrics must be"})
    max_verbatim: int = field(default=0, metadata={
        "help": "generated texts allowed to equal a training message (novelty check)"})
    max_flagged: int = field(default=0, metadata={
        "help": "generated texts allowed a copied span of >= 20 words (novelty check)"})
    compare_old: bool = field(default=True, metadata={
        "help": "score the old adapter with the same protocol when its stored scores are not"
                " comparable"})

    def __post_init__(self) -> None:
        for name in ("authorship_tol", "distance_tol", "z", "floor_margin", "max_verbatim",
                     "max_flagged"):
            if getattr(self, name) < 0:
                raise InputError(f"gate: invalid {name}={getattr(self, name)!r} (must be >= 0)")


@dataclass
class Decision:
    """What the pipeline decided for one candidate, and why."""

    adapter: str
    user: str
    base: str
    status: str                     # promoted | rejected | candidate (the gate did not run)
    reason: str                     # one line
    passed: bool | None = None      # None: the gate did not run
    forced: bool = False
    against: str | None = None      # "old" (an adapter's scores) or "floor"
    bar_adapter: str | None = None  # the adapter whose scores set the bar
    bar_source: str | None = None
    bar: dict | None = None
    candidate: dict | None = None   # the candidate's scores the gate read
    old: dict | None = None
    reasons: list[str] = field(default_factory=list)
    protocol: str | None = None
    n: int | None = None
    at: str = field(default_factory=utcnow)
    evaluation: dict | None = field(default=None, repr=False)  # full evaluate() result

    def record(self) -> dict:
        """What is stored with the adapter (everything but the full evaluation)."""
        return {k: v for k, v in asdict(self).items() if k != "evaluation"}


# ------------------------------------------------------------------------------ the gate
def _se(scores: dict | None, metric: str) -> float:
    """The bootstrap standard error stored beside a score (0 for scores without one)."""
    return float((((scores or {}).get("intervals") or {}).get(metric) or {}).get("se") or 0.0)


def gate(result: dict, old_scores: dict | None, cfg: GateConfig) -> dict:
    """Pass or refuse a candidate from its ``evaluate`` result. Pure.

    With the old adapter's scores: refused only when worse beyond noise on a style score, i.e.
    authorship probability below the old one, or fingerprint distance above it, by more than
    ``z`` standard errors of the difference (bootstrap intervals over the eval prompts,
    ``evaluate/intervals.py``) plus the metric's tolerance. Without (a user's first adapter):
    both scores beyond the calibrated floor (other users' real text) by ``floor_margin``.
    Always: at most ``max_verbatim`` generated texts equal to a training message and
    ``max_flagged`` with a long copied span.
    """
    import math

    s, calib, nov = result["adapter_scores"], result["calibration"], result["novelty"]
    ap, fd = s["authorship_probability"], s["fingerprint_distance"]
    reasons = []
    if old_scores:
        against = "old"
        noise = {m: cfg.z * math.sqrt(_se(s, m) ** 2 + _se(old_scores, m) ** 2)
                 for m in ("authorship_probability", "fingerprint_distance")}
        bar = {"authorship_probability": old_scores["authorship_probability"]
               - cfg.authorship_tol - noise["authorship_probability"],
               "fingerprint_distance": old_scores["fingerprint_distance"] + cfg.distance_tol
               + noise["fingerprint_distance"]}
        if ap < bar["authorship_probability"]:
            reasons.append(f"authorship probability {ap:.3f} < old"
                           f" {old_scores['authorship_probability']:.3f} beyond noise"
                           f" ({noise['authorship_probability']:.3f}"
                           + (f" + {cfg.authorship_tol:g}" if cfg.authorship_tol else "") + ")")
        if fd > bar["fingerprint_distance"]:
            reasons.append(f"fingerprint distance {fd:.3f} > old"
                           f" {old_scores['fingerprint_distance']:.3f} beyond noise"
                           f" ({noise['fingerprint_distance']:.3f}"
                           + (f" + {cfg.distance_tol:g}" if cfg.distance_tol else "") + ")")
    else:
        against = "floor"
        ap_floor = calib["authorship_probability"]["floor"]
        fd_floor = calib["fingerprint_distance"]["floor"]
        bar = {"authorship_probability": ap_floor + cfg.floor_margin,
               "fingerprint_distance": fd_floor - cfg.floor_margin}
        if not ap > bar["authorship_probability"]:
            reasons.append(f"authorship probability {ap:.3f} is not above the floor {ap_floor:.3f}"
                           + (f" + {cfg.floor_margin:g}" if cfg.floor_margin else ""))
        if not fd < bar["fingerprint_distance"]:
            reasons.append(f"fingerprint distance {fd:.3f} is not below the floor {fd_floor:.3f}"
                           + (f" - {cfg.floor_margin:g}" if cfg.floor_margin else ""))
    if nov["verbatim"] > cfg.max_verbatim:
        reasons.append(f"novelty: {nov['verbatim']} generated texts copy a training message"
                       f" verbatim (allowed {cfg.max_verbatim})")
    if nov["flagged"] > cfg.max_flagged:
        reasons.append(f"novelty: {nov['flagged']} generated texts copy a span of >="
                       f" {nov['flag_words']} words (allowed {cfg.max_flagged})")
    cand = {"authorship_probability": ap, "fingerprint_distance": fd}
    if s.get("intervals"):
        cand["intervals"] = s["intervals"]
    return {"passed": not reasons, "against": against, "bar": bar, "reasons": reasons,
            "candidate": cand, "old": old_scores}


# ------------------------------------------------------------------------------ the pipeline
def build(home: Home, req, *, evaluate: bool = True, eval_cfg=None,
          gate_cfg: GateConfig | None = None, against: str | None = None,
          log: Log | None = None, progress=None) -> tuple[Manifest, Decision]:
    """Compile a candidate for ``req`` (a ``compile.run.CompileRequest``), then, unless
    ``evaluate=False`` (experiments: the result stays a candidate), run it through the gate."""
    from .compile.run import compile_adapter

    manifest = compile_adapter(home, req, log=log, progress=progress)
    if not evaluate:
        decision = Decision(manifest.id, manifest.user, manifest.base_name, "candidate",
                            "compiled without evaluation: a candidate until `idiolect adapter"
                            f" promote {manifest.id}`")
        return manifest, decision
    return manifest, promote(home, manifest.id, eval_cfg=eval_cfg, gate_cfg=gate_cfg,
                             against=against, log=log)


def promote(home: Home, adapter_id: str, *, user: str | None = None, force: bool = False,
            evaluate: bool = True, eval_cfg=None, gate_cfg: GateConfig | None = None,
            against: str | None = None, log: Log | None = None) -> Decision:
    """Evaluate a candidate (or a rejected adapter) and gate it: promote it or reject it.

    ``against``: the adapter whose scores set the bar (default: the user's active adapter on
    the candidate's base; none: the calibrated floor). ``user``: refuse unless the adapter is
    this user's. ``force``: promote whatever the gate says (recorded). ``evaluate=False`` is
    allowed only with ``force`` (a forced promotion with no scores)."""
    from .evaluate.run import EvalConfig

    log = log or (lambda s: None)
    conn = home.conn
    row = _promotable(home, adapter_id, user)
    if not evaluate and not force:
        raise IdiolectError("promoting without evaluation needs force")
    unavailable, members = (_gate_unavailable(home, row["user"]) if evaluate
                            else ("not evaluated", None))
    if unavailable:
        d = Decision(row["id"], row["user"], row["base"], row["state"],
                     f"the gate cannot run: {unavailable}")
        if force:
            d.status, d.forced = "promoted", True
            d.reason = f"forced promotion without the gate ({unavailable})"
            adapters.decide(conn, row["id"], "active", d.record())
        elif row["state"] == "candidate":  # recorded; a rejected adapter keeps its rejection
            adapters.decide(conn, row["id"], "candidate", d.record())
        log(f"gate: {d.reason}")
        return d
    cfg = eval_cfg or EvalConfig()
    bar_row = _bar_adapter(conn, row, against)
    was_active = adapters.active(conn, row["user"], row["base"])
    from .evaluate.report import save_result
    from .evaluate.run import evaluate as run_evaluation

    log(f"gate: evaluating candidate {row['id']} on {row['user']}'s frozen eval set")
    result = run_evaluation(home, row["user"], row["id"], cfg=cfg, log=log, members=members)
    save_result(home, result)  # the full result (samples) for `idiolect report`
    old_scores, bar_note = _bar(home, bar_row, result, cfg, gate_cfg or GateConfig(), log,
                                members)
    g = gate(result, old_scores, gate_cfg or GateConfig())
    passed = g["passed"]
    status = "promoted" if passed or force else "rejected"
    if passed:
        reason = f"passed the gate against the {g['against']}"
    else:
        reason = "; ".join(g["reasons"])
        if force:
            reason = "forced despite the gate: " + reason
    d = Decision(row["id"], row["user"], row["base"], status, reason, passed=passed,
                 forced=force and not passed, against=g["against"],
                 bar_adapter=bar_row["id"] if bar_row is not None and old_scores else None,
                 bar_source=bar_note, bar=g["bar"], candidate=g["candidate"], old=g["old"],
                 reasons=g["reasons"], protocol=result.get("protocol"), n=result["n"],
                 evaluation=result)
    adapters.decide(conn, row["id"], "active" if status == "promoted" else "rejected",
                    d.record(), expect_active=was_active["id"] if was_active else None)
    log(f"gate: {status}: {reason}")
    return d


def _promotable(home: Home, adapter_id: str, user: str | None):
    """The adapter's row if it may be gated: refuse another user's, an active or retired one,
    and one whose base is not installed here. Nothing is changed when refused."""
    row = adapters.get(home.conn, adapter_id)
    if user is not None and row["user"] != user:
        raise IdiolectError(f"adapter {row['id']} belongs to {row['user']!r}, not {user!r}:"
                            " nothing changed")
    if row["state"] == "active":
        raise IdiolectError(f"adapter {row['id']} is already active for {row['user']!r} on"
                            f" {row['base']!r}: nothing changed")
    if row["state"] == "retired":
        raise IdiolectError(f"adapter {row['id']} is retired: `idiolect adapter rollback"
                            f" {row['user']} --base {row['base']}` re-activates the previous one;"
                            " nothing changed")
    ref = bases.resolve(home, row["base"])
    if ref.kind == "local" and not (ref.hf_dir / "config.json").exists():
        raise NotFound(f"base {ref.name!r}: its folder {ref.hf_dir} is gone: nothing changed")
    if ref.packaged is not None and not ref.cached and ref.packaged.part_paths() is None:
        raise NotFound(f"base {ref.name!r} is not installed: run `idiolect base install"
                       f" {ref.name}` first; nothing changed")
    adapters.verify_files(Path(row["path"]))
    return row


def _gate_unavailable(home: Home, user: str):
    """(why the gate cannot judge this user's adapters now, or None; the home's cohort, computed
    once here for the evaluations that follow, or None)."""
    from .evaluate.run import cohort

    if store.eval_set(home.conn, user) is None:
        return (f"user {user!r} has no frozen eval set (`idiolect user freeze-eval {user}`)",
                None)
    members = cohort(home.conn)
    if user not in members.users:
        return (f"user {user!r} has no reference split to fit the style scorers on (too few"
                " messages outside the eval set)"), members
    if len(members.users) < 2:
        return ("evaluation needs a cohort of at least 2 users with frozen eval sets, this home"
                f" has {len(members.users)}: import and freeze another user to compare"
                " against"), members
    return None, members


def _bar_adapter(conn, row, against: str | None):
    """The adapter whose scores the candidate must match: ``against``, else the user's active
    adapter on the candidate's base, else None (the calibrated floor)."""
    if against is not None:
        bar = adapters.get(conn, against)
        if bar["user"] != row["user"] or bar["id"] == row["id"]:
            raise IdiolectError(f"adapter {bar['id']} cannot set the bar for {row['id']}: it must"
                                f" be another adapter of {row['user']!r}")
        return bar
    return adapters.active(conn, row["user"], row["base"])


def _bar(home: Home, bar_row, result: dict, eval_cfg, cfg: GateConfig, log: Log,
         members=None) -> tuple[dict | None, str]:
    """The bar adapter's scores under the candidate's protocol, or None (then: the floor).

    Stored scores count when they were made under the same protocol (settings, eval set,
    cohort); otherwise the bar adapter is scored now (``compare_old``), on its own base."""
    from .evaluate.run import evaluate as run_evaluation

    if bar_row is None:
        return None, "calibrated floor (no adapter to replace)"
    stored = json.loads(bar_row["metrics"] or "{}").get("eval") or {}
    if stored.get("protocol") == result.get("protocol") and stored.get("adapter_scores"):
        return stored["adapter_scores"], f"stored scores of {bar_row['id']} (same protocol)"
    note = ""
    if cfg.compare_old:
        try:
            log(f"gate: scoring {bar_row['id']} (the adapter it would replace) the same way")
            r = run_evaluation(home, bar_row["user"], bar_row["id"], cfg=eval_cfg, log=log,
                               members=members)
            return r["adapter_scores"], f"{bar_row['id']} scored on {bar_row['base']} now"
        except IdiolectError as e:
            note = f"{bar_row['id']} could not be scored ({e}): "
    return None, note + f"calibrated floor ({bar_row['id']} has no scores under this protocol)"
