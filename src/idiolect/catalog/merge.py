"""Merging two (or more) LoRA adapters of one base into a new adapter: base + a*d1 + b*d2.

For each adapted module, adapter i adds the delta d_i = s_i * B_i @ A_i (s_i = alpha_i / r_i,
or alpha_i / sqrt(r_i) with rsLoRA). Averaging the A and B factors linearly is NOT the average of
the deltas (B1A1 + B2A2 != (B1+B2)(A1+A2)/2...), so the merge is done on the deltas, exactly:

- ``rank=None`` (default, exact): concatenate along the rank dimension,
  A = [A1; A2], B = [w1 s1 B1, w2 s2 B2] / s, with rank r1 + r2 and alpha = rank (s = 1), so
  s * B @ A = w1 d1 + w2 d2 to float precision.
- ``rank=r`` (re-factor): the best rank-r approximation of w1 d1 + w2 d2 (Eckart-Young), through
  QR of the stacked factors and an SVD of a small (r1+r2)^2 core (never the full matrix), split as
  B = U sqrt(S) / sqrt(s), A = sqrt(S) V^T / sqrt(s) with s = alpha / r. Exact when r >= r1 + r2;
  used when a compile recipe fixes the rank and alpha that a warm start must load into.

A module adapted by only one adapter gets a zero block from the other. DoRA and per-module
rank/alpha patterns are refused.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

from .. import lora
from ..errors import IdiolectError, InputError
from ..home import Home
from ..manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Manifest

def _factors(folder: Path) -> tuple[dict, dict[str, tuple]]:
    """(config, {module prefix: (A, B)}) of a PEFT LoRA folder."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora"):
        raise InputError(f"{folder}: only plain LoRA adapters can be merged")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise InputError(f"{folder}: per-module rank/alpha patterns are not supported")
    mods, others = lora.group(load_file(str(folder / ADAPTER_WEIGHTS)))
    bad = lora.incomplete(mods) + others
    if bad:
        raise InputError(f"{folder}: unexpected tensors (not LoRA A/B pairs): {bad[:3]}")
    return cfg, {m: (ab[lora.A].float(), ab[lora.B].float()) for m, ab in mods.items()}


def merge_folders(folders: Sequence[Path], weights: Sequence[float], out: Path,
                  rank: int | None = None, alpha: float | None = None) -> dict:
    """Write the merged PEFT folder (weights + config) to ``out``; returns merge facts."""
    import torch
    from safetensors.torch import save_file

    if len(folders) < 2 or len(folders) != len(weights):
        raise InputError("a merge needs at least two adapters and one weight per adapter")
    loaded = [_factors(Path(f)) for f in folders]
    cfgs = [c for c, _ in loaded]
    modules = sorted(set().union(*(m.keys() for _, m in loaded)))
    out_tensors, kept = {}, []
    new_rank = rank or sum(c["r"] for c in cfgs)
    new_alpha = float(alpha) if alpha is not None else float(new_rank)
    s_new = new_alpha / new_rank
    for mod in modules:
        a_parts, b_parts = [], []
        shape_in = shape_out = None
        for _, mods in loaded:
            if mod in mods:
                shape_in, shape_out = mods[mod][0].shape[1], mods[mod][1].shape[0]
        for (cfg, mods), w in zip(loaded, weights):
            zero = (torch.zeros(cfg["r"], shape_in), torch.zeros(shape_out, cfg["r"]))
            A, B = mods.get(mod, zero)
            if A.shape[1] != shape_in or B.shape[0] != shape_out:
                raise InputError(f"{mod}: adapters disagree on the module's shape")
            a_parts.append(A)
            b_parts.append(B * (w * lora.scale(cfg)))
        A_cat, B_cat = torch.cat(a_parts, 0), torch.cat(b_parts, 1)   # delta = B_cat @ A_cat
        if rank is None:
            A_new, B_new = A_cat, B_cat / s_new
        else:
            A_new, B_new, energy = _refactor(A_cat, B_cat, rank, s_new)
            kept.append(energy)
        out_tensors[lora.key(mod, lora.A)] = A_new.contiguous()
        out_tensors[lora.key(mod, lora.B)] = B_new.contiguous()
    cfg = dict(cfgs[0])
    targets = set()
    for c in cfgs:
        t = c.get("target_modules")
        targets |= set([t] if isinstance(t, str) else t or [])
    layers = [c.get("layers_to_transform") for c in cfgs]
    cfg.update(r=new_rank, lora_alpha=new_alpha, use_rslora=False, rank_pattern={},
               alpha_pattern={}, target_modules=sorted(targets),
               layers_to_transform=None if any(x is None for x in layers)
               else sorted(set().union(*map(set, layers))))
    out.mkdir(parents=True, exist_ok=True)
    save_file(out_tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return {"method": "concat" if rank is None else "svd", "rank": new_rank, "alpha": new_alpha,
            "weights": [round(float(w), 6) for w in weights], "modules": len(modules),
            "energy_kept": None if not kept else round(min(kept), 6)}


def _refactor(A_cat, B_cat, rank: int, s_new: float):
    """Best rank-``rank`` factors of B_cat @ A_cat, scaled for s_new; and the energy kept."""
    import torch

    qb, rb = torch.linalg.qr(B_cat)            # (out, R), (R, R)
    qa, ra = torch.linalg.qr(A_cat.T)          # (in, R), (R, R)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt() / math.sqrt(s_new)
    B = (qb @ u[:, :k]) * root
    A = root[:, None] * (vh[:k] @ qa.T)
    if k < rank:  # pad with zero directions up to the requested rank
        B = torch.cat([B, B.new_zeros(B.shape[0], rank - k)], 1)
        A = torch.cat([A, A.new_zeros(rank - k, A.shape[1])], 0)
    total = float((s ** 2).sum())
    return A, B, 1.0 if total == 0 else float((s[:k] ** 2).sum()) / total


def merge_adapters(home: Home, sources: Sequence[tuple[str, float]], user: str,
                   rank: int | None = None, alpha: float | None = None) -> Manifest:
    """Merge local adapters (id, weight) of one base into a new candidate adapter of ``user``.
    Returns its manifest; ``warm_start.merge`` records the sources, weights and method."""
    import hashlib

    from .. import adapters
    from ..bases import load as bases
    from ..compile.recipe import prompt_format
    from ..home import new_id, utcnow
    from ..manifest import package_versions
    from ..vault import store

    t0 = time.perf_counter()
    conn = home.conn
    store.require_user(conn, user)
    rows = [adapters.get(conn, i) for i, _ in sources]
    if len({r["base_digest"] for r in rows}) != 1:
        raise IdiolectError("cannot merge adapters of different bases")
    for r in rows:
        adapters.verify_files(Path(r["path"]))
    ref = bases.resolve(home, rows[0]["base"])
    fp = bases.read_fingerprint(ref)
    if fp["digest"] != rows[0]["base_digest"]:
        raise IdiolectError(f"local base {ref.name!r} is not the adapters' base")
    parents = [Manifest.read(Path(r["path"])) for r in rows]
    formats = [prompt_format(p.recipe) for p in parents]
    if any(f != formats[0] for f in formats):
        raise IdiolectError("cannot merge adapters prompted differently: " + "; ".join(
            f"{r['id']} {f}" for r, f in zip(rows, formats)))
    adapter_id = new_id()
    with adapters.staging(home, adapter_id) as staging:
        facts = merge_folders([Path(r["path"]) for r in rows], [w for _, w in sources], staging,
                              rank, alpha)
        cfg = json.loads((staging / ADAPTER_CONFIG).read_text())
        cfg.update(base_model_name_or_path=f"idiolect/{ref.name}", revision=fp["digest"][:16])
        (staging / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        recipe = dict(parents[0].recipe)
        # the merge holds every parent's pairs: the union of their modules, and all layers
        # where a parent had all (lora_layers 0), else the widest top-k
        layers = [p.recipe.get("lora_layers", 0) or 0 for p in parents]
        recipe.update(rank=facts["rank"], alpha=facts["alpha"],
                      target_modules=sorted(set().union(*(p.recipe.get("target_modules") or []
                                                          for p in parents))),
                      lora_layers=0 if 0 in layers else max(layers))
        snap = hashlib.sha256("\n".join(sorted(p.snapshot["digest"] for p in parents))
                              .encode()).hexdigest()
        ev = store.eval_set(conn, user)
        manifest = Manifest(
            id=adapter_id, user=user, created_at=utcnow(),
            base={"name": ref.name, "fingerprint": fp},
            snapshot={"digest": snap, "messages": 0, "examples": 0},
            eval_set={"digest": ev["digest"], "size": ev["size"]} if ev else None,
            recipe=recipe, parent=rows[0]["id"],
            warm_start={"merge": facts | {"sources": [r["id"] for r in rows]}},
            packages=package_versions(), files=adapters.file_digests(staging),
            timings={"total_s": round(time.perf_counter() - t0, 2)})
        manifest.write(staging)
        adapters.install(home, staging, manifest)
    return manifest
