"""Transport: can an adapter compiled for one base be loaded onto another? Always diagnosed first.

``diagnose`` compares the adapter's manifest (the fingerprint of the base it was compiled for)
and the shapes of its actual tensors (read from the safetensors header, no model load) with the
target base's fingerprint. The verdict is one of:

- ``compatible``: compiled for exactly this base (same fingerprint digest);
- ``incompatible``: tensor shapes differ, adapted modules are missing, the tokenizer or the
  architecture differs (the reason names which);
- ``loadable-other-weights``: mechanically loadable (same shapes, tokenizer, architecture) but
  compiled for other weights: it loads without an error and means something else.

``try_load`` really attempts ``peft.PeftModel.from_pretrained`` on the target base and reports the
real error in one line. Every diagnosis is recorded in the ``transports`` table.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

from . import adapters, lora
from .bases import load as bases
from .errors import IdiolectError, InputError
from .home import Home, new_id, transaction, utcnow
from .manifest import ADAPTER_WEIGHTS, Manifest

VERDICTS = ("compatible", "incompatible", "loadable-other-weights")
SHOW_SHAPES = 5       # mismatching shapes listed by name in a report
ERROR_CHARS = 400     # a load error is cut to this many characters


def tensor_shapes(folder: Path) -> dict[str, dict[str, list[int]]]:
    """{module: {"lora_A": [r, in], "lora_B": [out, r]}} from the adapter's safetensors header.

    Keys that are not LoRA A/B matrices are listed under the module name ``"?"+key``.
    """
    from safetensors import safe_open

    path = folder / ADAPTER_WEIGHTS
    if not path.exists():
        raise InputError(f"{folder}: missing {path.name}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # OSError, or safetensors' own SafetensorError on a bad header
        raise InputError(f"{path}: unreadable safetensors ({one_line(e)})") from None
    pairs, others = lora.group(shapes)
    return pairs | {"?" + key: {"tensor": shapes[key]} for key in others}


def _fmt(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def compare(source_fp: dict, target_fp: dict, shapes: dict[str, dict[str, list[int]]]) -> dict:
    """The diagnosis of ``shapes`` (see ``tensor_shapes``), compiled for ``source_fp``, against
    ``target_fp``. Pure: no files, no database."""
    tmods = target_fp.get("modules", {})
    smods = source_fp.get("modules", {})
    missing, differ, manifest_differ, checked = [], [], [], 0
    lora = {m: p for m, p in shapes.items() if not m.startswith("?")}
    for module in sorted(lora, key=_module_order):
        parts = lora[module]
        if module not in tmods:
            missing.append(module)
            continue
        out_f, in_f = tmods[module]
        rank = (parts.get("lora_A") or parts.get("lora_B")[::-1])[0]
        want = {"lora_A": [rank, in_f], "lora_B": [out_f, rank]}
        for part in ("lora_A", "lora_B"):
            if part not in parts:
                continue
            checked += 1
            if list(parts[part]) != want[part]:
                differ.append(f"{module} {part} {_fmt(parts[part])} vs {_fmt(want[part])}")
        if module in smods:  # the manifest's fingerprint should describe the very same tensors
            s_out, s_in = smods[module]
            if parts.get("lora_A", [rank, s_in])[1] != s_in or \
                    parts.get("lora_B", [s_out, rank])[0] != s_out:
                manifest_differ.append(module)
    arch_same = (source_fp.get("architecture"), source_fp.get("model_type")) == \
        (target_fp.get("architecture"), target_fp.get("model_type"))
    tok_same, template_only = _same_tokens(source_fp, target_fp)
    weights_same = source_fp.get("weights_digest") == target_fp.get("weights_digest")
    digest_same = source_fp.get("digest") == target_fp.get("digest")

    reasons = []
    if not arch_same:
        reasons.append(f"the architecture differs ({source_fp.get('architecture')} vs "
                       f"{target_fp.get('architecture')})")
    if differ:
        reasons.append(f"{len(differ)} of {checked} tensor shapes differ (first: {differ[0]})")
    if missing:
        reasons.append(f"{len(missing)} of {len(lora)} adapted modules are missing on the "
                       f"target (first: {missing[0]})")
    if not tok_same:
        reasons.append("the tokenizer differs")
    if manifest_differ:
        reasons.append(f"the adapter's tensors do not match its own manifest for "
                       f"{len(manifest_differ)} modules")
    notes = ["the tokenizer has the same vocabulary, only its chat template differs"] \
        if template_only else []
    if reasons:
        verdict = "incompatible"
        message = "incompatible: " + _join(reasons) + "."
    elif digest_same or weights_same:
        verdict = "compatible"
        message = ("compatible: compiled for exactly this base (same fingerprint digest)."
                   if digest_same else
                   "compatible: same architecture, shapes, tokenizer and weights.")
    else:
        verdict = "loadable-other-weights"
        message = ("loadable-other-weights: mechanically loadable but compiled for other weights"
                   " (same shapes and tokenizer, different weights digest): recompile instead.")
    if notes:
        message = message[:-1] + "".join(f"; {n}" for n in notes) + "."
    return {
        "verdict": verdict,
        "message": message,
        "reasons": reasons,
        "architecture": {"from": source_fp.get("architecture"), "to": target_fp.get("architecture"),
                         "same": arch_same},
        "tokenizer": {"from": source_fp.get("tokenizer_digest"),
                      "to": target_fp.get("tokenizer_digest"), "same": tok_same,
                      "chat_template_same": _same_digest(source_fp, target_fp,
                                                         "chat_template_digest")},
        "notes": notes,
        "weights": {"from": source_fp.get("weights_digest"), "to": target_fp.get("weights_digest"),
                    "same": weights_same},
        "digest": {"from": source_fp.get("digest"), "to": target_fp.get("digest"),
                   "same": digest_same},
        "modules": {"adapted": len(lora), "present": len(lora) - len(missing),
                    "missing": missing, "other_tensors": sorted(m[1:] for m in shapes
                                                                if m.startswith("?"))},
        "shapes": {"checked": checked, "differ": len(differ), "first": differ[:SHOW_SHAPES]},
        "manifest_mismatch": manifest_differ,
    }


def _same_digest(source_fp: dict, target_fp: dict, key: str) -> bool:
    """Both fingerprints' ``key`` digests equal; fingerprints made before that digest existed
    fall back to the whole tokenizer's digest."""
    if source_fp.get(key) and target_fp.get(key):
        return source_fp[key] == target_fp[key]
    return source_fp.get("tokenizer_digest") == target_fp.get("tokenizer_digest")


def _same_tokens(source_fp: dict, target_fp: dict) -> tuple[bool, bool]:
    """(same token ids, differing in the chat template only). The token ids (vocabulary and
    special tokens) are what an adapter depends on; fingerprints made before ``vocab_digest``
    existed compare the whole tokenizer, template included."""
    same = _same_digest(source_fp, target_fp, "vocab_digest")
    return same, same and source_fp.get("tokenizer_digest") != target_fp.get("tokenizer_digest")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _module_order(name: str):
    """Layer by layer, and q, k, v, o, gate, up, down inside a layer (the model's order)."""
    prefix, _, last = name.rpartition(".")
    rank = bases.ADAPTABLE.index(last) if last in bases.ADAPTABLE else len(bases.ADAPTABLE)
    return _natural(prefix), rank, last


def _with_vocab_digest(home: Home, base_name: str, fp: dict) -> dict:
    """A manifest pinned before fingerprints had ``vocab_digest``: take it from the source base
    installed here when its tokenizer is the very one the manifest pinned."""
    if "vocab_digest" in fp:
        return fp
    try:
        ref = bases.resolve(home, base_name)
    except IdiolectError:  # the source base is unknown here: compare whole tokenizers
        return fp
    if not ref.cached:  # never dequantize a base just for this
        return fp
    here = bases.read_fingerprint(ref)
    if here.get("tokenizer_digest") != fp.get("tokenizer_digest") or "vocab_digest" not in here:
        return fp
    return fp | {k: here[k] for k in ("vocab_digest", "chat_template_digest")}


def diagnose(home: Home, adapter_id: str, base_name: str, record: bool = True) -> dict:
    """Diagnose loading ``adapter_id`` onto base ``base_name``; recorded unless ``record=False``."""
    conn = home.conn
    row = adapters.get(conn, adapter_id)
    folder = Path(row["path"])
    source_fp = Manifest.read(folder).base["fingerprint"]
    source_fp = _with_vocab_digest(home, row["base"], source_fp)
    ref = bases.resolve(home, base_name)
    target_fp = bases.read_fingerprint(ref)
    report = compare(source_fp, target_fp, tensor_shapes(folder))
    report.update(id=new_id(), adapter=row["id"], user=row["user"], from_base=row["base"],
                  to_base=ref.name, created_at=utcnow())
    if record:
        with transaction(conn):
            conn.execute(
                "INSERT INTO transports (id, adapter, user, from_base, to_base, from_digest,"
                " to_digest, verdict, message, report, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (report["id"], row["id"], row["user"], row["base"], ref.name,
                 report["digest"]["from"] or "", report["digest"]["to"] or "", report["verdict"],
                 report["message"], json.dumps(report), report["created_at"]))
    return report


def one_line(exc: BaseException, limit: int = ERROR_CHARS) -> str:
    """``Type: first line`` of an exception, with its first detail line and a count of the rest.

    PEFT's size-mismatch error lists every tensor (kilobytes): we keep the first and count."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    head = lines[0] if lines else ""
    rest = lines[1:]
    if rest and head.endswith(":"):
        head += " " + rest.pop(0)
    if rest:
        head += f" (+{len(rest)} more)"
    text = f"{type(exc).__name__}: {head}" if head else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def try_load(home: Home, adapter_id: str, base_name: str,
             diagnosis_id: str | None = None) -> dict:
    """Really load the adapter onto the base with ``PeftModel.from_pretrained``.

    Returns ``{"adapter", "base", "loaded", "error", "seconds"}``; ``error`` is the real error in
    one line. When ``diagnosis_id`` is given the result is stored with that diagnosis."""
    conn = home.conn
    row = adapters.get(conn, adapter_id)
    folder = Path(row["path"])
    ref = bases.resolve(home, base_name)
    t0 = time.perf_counter()
    model, _tok = bases.load(ref)
    error = None
    try:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PeftModel.from_pretrained(model, str(folder))
    except Exception as e:  # the point is to report whatever PEFT/torch raise
        error = one_line(e)
    result = {"adapter": row["id"], "base": ref.name, "loaded": error is None, "error": error,
              "seconds": round(time.perf_counter() - t0, 2)}
    if diagnosis_id:
        with transaction(conn):
            conn.execute("UPDATE transports SET loaded=?, load_error=? WHERE id=?",
                         (int(error is None), error, diagnosis_id))
    return result


def history(conn: sqlite3.Connection, adapter_id: str | None = None) -> list[dict]:
    """Recorded diagnoses (newest first), optionally of one adapter."""
    sql = ("SELECT id, adapter, user, from_base, to_base, verdict, message, loaded, load_error,"
           " created_at FROM transports")
    args: tuple = ()
    if adapter_id:
        sql, args = sql + " WHERE adapter=?", (adapters.get(conn, adapter_id)["id"],)
    return [dict(r) for r in conn.execute(sql + " ORDER BY created_at DESC, rowid DESC", args)]
