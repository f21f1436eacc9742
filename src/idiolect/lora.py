"""PEFT LoRA tensors by name, and the LoRA scale: what transport, export, the catalog's merge and
its server all read the same way.

PEFT saves a LoRA adapter's matrices as ``base_model.model.<module>.lora_A.weight`` (r, in) and
``...lora_B.weight`` (out, r); an adapter name segment (``lora_A.default.weight``) may sit before
``weight``. A module's delta is ``scale * B @ A`` with ``scale = alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA; ``alpha_pattern`` overrides alpha per module (``rank_pattern``
the rank, which is read from the tensors themselves).

No torch here: the values are whatever the caller read (shapes, numpy arrays, torch tensors).
"""

from __future__ import annotations

import math
import re
from typing import Mapping, TypeVar

T = TypeVar("T")
A, B = "lora_A", "lora_B"
PREFIX = "base_model.model."
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_[AB])(?:\.[^.]+)?\.weight$")


def split(key: str) -> tuple[str, str] | None:
    """(module, ``lora_A`` or ``lora_B``) of a saved tensor name, or None if it is not one."""
    m = _KEY.match(key)
    return (m["module"], m["part"]) if m else None


def key(module: str, part: str) -> str:
    """The saved tensor name of ``module``'s ``part`` (the inverse of ``split``)."""
    return f"{PREFIX}{module}.{part}.weight"


def group(tensors: Mapping[str, T]) -> tuple[dict[str, dict[str, T]], list[str]]:
    """({module: {"lora_A": value, "lora_B": value}}, names that are not LoRA A/B matrices)."""
    pairs: dict[str, dict[str, T]] = {}
    others: list[str] = []
    for name, value in tensors.items():
        parsed = split(name)
        if parsed is None:
            others.append(name)
        else:
            pairs.setdefault(parsed[0], {})[parsed[1]] = value
    return pairs, others


def incomplete(pairs: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Modules (sorted) that lack their A or their B matrix."""
    return sorted(m for m, p in pairs.items() if set(p) != {A, B})


def scale(cfg: Mapping, module: str = "", rank: int | None = None) -> float:
    """PEFT's scaling of one module of an adapter_config: alpha / r, or alpha / sqrt(r) with
    rsLoRA. ``rank`` (read from the module's tensors) defaults to the config's ``r``; the
    module's ``alpha_pattern`` entry, if any, replaces ``lora_alpha`` (PEFT's default 8)."""
    r = rank if rank is not None else cfg["r"]
    alpha = cfg.get("lora_alpha", 8)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = value
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
