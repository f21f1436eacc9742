"""Loading a base with an adapter, and batched generation of message bodies (KV cache, left padding)."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import adapters
from .bases import load as bases
from .compile.prompts import cut_echo, prompt_text
from .errors import IdiolectError
from .home import Home


@dataclass
class GenerationConfig:
    """How bodies are sampled: by `idiolect draft`, `eval` (the frozen eval set's protocol) and,
    for fields a request leaves out, `idiolect serve`. The decoding defaults (temperature 1.0,
    top-p 0.95, no repetition penalty: the model's own distribution, its tail trimmed) beat
    0.7 / 0.9 / 1.1 on the 12 git authors on fingerprint distance and subject fit, paired by
    user, with authorship probability not worse beyond noise (bench/results/levers_e1-250.json);
    a repetition penalty above 1 penalizes the very words an author repeats.

    ``top_k`` 50 was transformers' own default under every one of those measurements (its
    ``generate`` applies it when a config leaves it unset); it is written out here so the
    server and llama.cpp sample the same way. 0 turns it off."""

    max_new_tokens: int = 160
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    batch_size: int = 8
    seed: int = 0
    #: transformers' cache_implementation ("static", "dynamic"); None: the decoder's own (for
    #: "lean" a KV cache preallocated to prompt + max_new_tokens and written in place, for
    #: "hf" transformers' dynamic one). "dynamic" with "lean": the cache transformers grows by
    #: concatenation every step (the lean loop before it had its own; benches compare them)
    cache: str | None = None
    #: "lean": idiolect's own decode loop (``lean_generate``: the same distribution as
    #: ``generate``, drawn among the top-k only), 1.3x ``generate``'s tokens/s at batch 64 on
    #: SmolLM2 (bench/results/generation_lean.json); it falls back to "hf" (transformers'
    #: ``generate``) where it does not apply (``lean_applies``)
    decoder: str = "lean"
    #: the lean loop stops computing rows that ended (``lean_generate``): the same tokens
    #: (each row's draws kept); False: every row computed until the last one ends
    shrink: bool = True
    #: the lean loop runs the prefill once per distinct prompt of a batch (best-of-N asks each
    #: prompt N times) and repeats its keys and values for the rows that share it; on float32
    #: models only (as ``shrink``), where it changes no token; False: every row prefilled
    share_prefill: bool = True
    #: cut a body where a line goes on into the prompt's own words (``prompts.cut_echo``);
    #: False: every generated token kept (throughput benches count them)
    cut_echo: bool = True

    def key(self) -> dict:
        """The fields as cache keys and eval protocols record them: ``top_k`` at 50,
        ``decoder`` at "hf" and ``shrink`` on are left out, as before they were fields
        (transformers applied a top-k of 50 then; shrinking changes no token), so those keys
        stay what they were."""
        out = asdict(self)
        if out["top_k"] == 50:
            del out["top_k"]
        if out["decoder"] == "hf":
            del out["decoder"]
        for flag in ("shrink", "share_prefill"):  # the same tokens either way (older keys
            if out[flag]:                           # stay what they were)
                del out[flag]
        return out


def _checked_row(home: Home, ref, adapter_id: str):
    """The adapter's row, refused when it was compiled for another base than ``ref``."""
    row = adapters.get(home.conn, adapter_id)
    if row["base_digest"] != bases.read_fingerprint(ref)["digest"]:
        raise IdiolectError(
            f"adapter {row['id']} was compiled for base {row['base']!r}, not {ref.name!r}:"
            f" see `idiolect transport check {row['id']} --base {ref.name}`"
        )
    return row


def load_for_inference(home: Home, base: str, adapter_id: str | None = None, log=None):
    """(model, tokenizer, adapter row or None). The adapter is checked against the base first."""
    ref = bases.resolve(home, base)
    row = _checked_row(home, ref, adapter_id) if adapter_id else None
    model, tok = bases.load(ref, progress=log)
    if row is not None:
        from peft import PeftModel

        folder = Path(row["path"])
        adapters.verify_files(folder)
        model = PeftModel.from_pretrained(model, str(folder))
        model.eval()
    return model, tok, row


def adapters_in_turn(home: Home, base: str, adapter_ids: Sequence[str | None], log=None):
    """Yield (model, tokenizer, row or None) for each of ``adapter_ids`` in order (None: the bare
    base), loading the base once: each adapter is loaded onto it beside the ones before and made
    the active one (LoRA layers of inactive adapters pass through). Each is checked as
    ``load_for_inference`` checks it, before the base is loaded. Use a model only until the next
    one is yielded, and never merged (unmerging leaves rounding in the weights the next one
    shares)."""
    ref = bases.resolve(home, base)
    rows = {aid: _checked_row(home, ref, aid) for aid in adapter_ids if aid}
    for row in rows.values():
        adapters.verify_files(Path(row["path"]))
    model, tok = bases.load(ref, progress=log)
    peft = None
    for aid in adapter_ids:
        if not aid:
            if peft is None:
                yield model, tok, None
            else:
                with peft.disable_adapter():
                    yield peft, tok, None
            continue
        if peft is None:
            from peft import PeftModel

            peft = PeftModel.from_pretrained(model, rows[aid]["path"], adapter_name=aid)
        elif aid not in peft.peft_config:
            peft.load_adapter(rows[aid]["path"], adapter_name=aid)
        peft.set_adapter(aid, inference_mode=True)  # its weights frozen, as a load of its own
        peft.eval()
        yield peft, tok, rows[aid]


@contextmanager
def merged(model):
    """A PEFT model with its LoRA folded into the base weights for the duration, unfolded after
    (any other model as it is). Generation then runs the plain matmuls instead of the base's
    plus LoRA's per module: on SmolLM2-135M 1.07x the tokens/s at batch 64 and 1.1x unbatched,
    same outputs (bench/results/generation_merge.json). Unfolding leaves rounding-level
    differences in the base weights: generate with the bare base (``disable_adapter``) before,
    not after."""
    if not (hasattr(model, "peft_config") and hasattr(model, "merge_adapter")):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def generate_bodies(model, tokenizer, prompts: Sequence[tuple[str, Sequence[str]]],
                    cfg: GenerationConfig | None = None, cut: list | None = None) -> list[str]:
    """One generated body per (subject, recipients) or (subject, recipients, shots), in
    batches, deterministic for a seed. Shots as ``compile.prompts.prompt_text`` takes them.
    ``cut``: a list that gets, per body, whether ``max_new_tokens`` ended it (no stop token,
    and no echo of a prompt header that ``cut_echo`` ended it at)."""
    import torch

    cfg = cfg or GenerationConfig()
    texts = [prompt_text(tokenizer, p[0], p[1], p[2] if len(p) > 2 else ()) for p in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    lean = lean_applies(cfg, model)  # decided once, as the stop tokens are read once
    eos = _eos_ids(model, tokenizer) if lean or cut is not None else []
    try:
        for start in range(0, len(texts), cfg.batch_size):
            chunk = texts[start:start + cfg.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(cfg.seed + start)
            if lean:
                new = lean_generate(model, enc, cfg, eos, tokenizer.pad_token_id)
            else:
                new = _hf_generate(model, tokenizer, enc, cfg)
            texts_out = tokenizer.batch_decode(new, skip_special_tokens=True)
            bodies = [cut_echo(t) if cfg.cut_echo else t.strip() for t in texts_out]
            outputs.extend(bodies)
            if cut is not None:
                full = new.shape[1] >= cfg.max_new_tokens
                stopped = torch.isin(new, torch.tensor(eos, dtype=new.dtype)).any(-1)
                cut.extend(bool(full and not s and b == t.strip())
                           for s, b, t in zip(stopped.tolist(), bodies, texts_out))
    finally:
        tokenizer.padding_side = old_side
    return outputs


def _hf_generate(model, tokenizer, enc, cfg: GenerationConfig):
    """The new token ids of a left-padded batch ``enc`` from transformers' ``generate``."""
    import torch

    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
            temperature=cfg.temperature if cfg.do_sample else None,
            top_p=cfg.top_p if cfg.do_sample else None,
            top_k=cfg.top_k if cfg.do_sample else None,
            repetition_penalty=cfg.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
            **({"cache_implementation": cfg.cache} if cfg.cache else {}),
        )
    return out[:, enc["input_ids"].shape[1]:]


#: settings of a model's own generation config that add a step ``generate`` takes and the lean
#: loop does not, with the value at which they add nothing
_GENERATE_ONLY = {"suppress_tokens": None, "begin_suppress_tokens": None, "bad_words_ids": None,
                  "min_new_tokens": None, "min_length": 0, "no_repeat_ngram_size": 0,
                  "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
                  "forced_bos_token_id": None, "forced_eos_token_id": None,
                  "sequence_bias": None, "exponential_decay_length_penalty": None}


def lean_applies(cfg: GenerationConfig, model=None) -> bool:
    """Whether ``cfg`` decodes with ``lean_generate``: asked for, and nothing it leaves out
    (a repetition penalty, no top-k, a static cache, no new token, or a step the ``model``'s
    own generation config adds to ``generate``: then ``generate`` runs). A ``cache`` of None or
    "dynamic" applies (``lean_generate`` says which cache each means)."""
    own = getattr(model, "generation_config", None)
    extra = [k for k, off in _GENERATE_ONLY.items() if getattr(own, k, off) not in (off, None)]
    return (cfg.decoder == "lean" and cfg.repetition_penalty == 1.0
            and cfg.cache in (None, "dynamic")
            and cfg.max_new_tokens > 0 and (not cfg.do_sample or cfg.top_k > 0) and not extra)


def _eos_ids(model, tokenizer) -> list[int]:
    """The tokens ``generate`` stops a row at: the model's generation config's, else the
    tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return sorted(set(eos if isinstance(eos, list) else [] if eos is None else [eos]))


def lean_generate(model, enc, cfg: GenerationConfig, eos: Sequence[int], pad: int):
    """The new token ids (rows, steps) for a left-padded batch ``enc``, as ``generate`` samples
    them but in a loop of its own: one prefill keeping only the last position's logits, then a
    token a step for every row through the KV cache, rows that wrote an end-of-sequence token
    padded with ``pad``, until all have or ``max_new_tokens``. Sampling draws from the torch
    global generator (seeded by the caller) among each row's ``top_k`` likeliest tokens only
    (``nucleus``), not over the whole vocabulary: the same distribution as transformers' warpers
    (temperature, top-k, top-p), other draws.

    The KV cache (``cfg.cache`` None) is preallocated to the prompt plus ``max_new_tokens`` and
    written in place (``preallocated_cache``), instead of transformers' dynamic cache, which
    copies every layer's keys and values into a new tensor each step (``cfg.cache``
    "dynamic": the same tokens, bench/generation.py compares the two).

    With ``cfg.shrink`` the rows that ended leave the batch once an eighth of it has (their
    cache, mask and positions dropped), so the steps after compute the live rows only. Each
    row keeps its draws: the sampler still draws for the whole batch (a placeholder
    distribution for the rows that left, as many draws as before), so the tokens are those of
    the full batch, unless a row that left would have had more ties with its top-k-th logit
    than any live row (``nucleus`` widens every row's candidates then). Ties are rare in
    float32 logits but come nearly every step in bfloat16 ones (a second reader measured 16 of
    24 rows changed on a bfloat16 model), so a model whose logits are not float32 never
    shrinks: ``shrink`` changes no token, as ``GenerationConfig.key`` assumes."""
    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    cache = None if cfg.cache == "dynamic" else preallocated_cache(
        model, ids.shape[1] + cfg.max_new_tokens)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    first, rows_of = _distinct_rows(ids, mask) if cfg.share_prefill and _float32(model) else (
        None, None)
    eos_t = torch.tensor(list(eos), dtype=torch.long)
    done = torch.zeros(len(ids), dtype=torch.bool)
    live = torch.arange(len(ids))  # the rows the model computes (indices into the batch)
    out, new = None, []
    with torch.no_grad():
        for step in range(cfg.max_new_tokens):
            if step == 0 and first is not None:  # each distinct prompt once, then repeated
                out = model(input_ids=ids[first], attention_mask=mask[first],
                            position_ids=pos[first], use_cache=True, past_key_values=cache,
                            logits_to_keep=1)
                out.past_key_values.batch_select_indices(rows_of)
                out.logits = out.logits[rows_of]
                shrink = cfg.shrink and out.logits.dtype == torch.float32
            elif step == 0:
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                            past_key_values=cache, logits_to_keep=1)
                # ties among bfloat16 logits depend on the rows computed: never shrink then
                shrink = cfg.shrink and out.logits.dtype == torch.float32
            else:
                ended = done[live]
                if shrink and int(ended.sum()) >= max(1, len(live) // 8):
                    keep = (~ended).nonzero().squeeze(-1)
                    out.past_key_values.batch_select_indices(keep)
                    live, mask, pos = live[keep], mask[keep], pos[keep]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                pos = pos[:, -1:] + 1
                out = model(input_ids=new[-1][live][:, None], attention_mask=mask,
                            position_ids=pos, past_key_values=out.past_key_values,
                            use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
            if cfg.do_sample:
                cand, probs = nucleus(logits, cfg.temperature, cfg.top_k, cfg.top_p)
                if len(live) < len(ids):  # the rows that left draw from a placeholder
                    cand = cand.new_zeros(len(ids), cand.shape[1]).index_copy_(0, live, cand)
                    full = probs.new_zeros(len(ids), probs.shape[1])
                    full[:, 0] = 1.0
                    probs = full.index_copy_(0, live, probs)
                token = cand.gather(-1, torch.multinomial(probs, 1)).squeeze(-1)
            else:
                token = torch.full((len(ids),), pad, dtype=torch.long).index_copy_(
                    0, live, logits.argmax(-1))
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done |= torch.isin(token, eos_t)
            if bool(done.all()):
                break
    return torch.stack(new, dim=1) if new else ids[:, :0]


def _float32(model) -> bool:
    """Whether ``model``'s weights are float32 (False where it shows none)."""
    import torch

    param = next(iter(getattr(model, "parameters", lambda: ())()), None)
    return param is not None and param.dtype == torch.float32


def _distinct_rows(ids, mask):
    """(the first row of each distinct prompt, for every row the index of its prompt among
    those), or (None, None) when every row's prompt is its own."""
    import torch

    seen: dict[tuple, int] = {}
    first, rows_of = [], []
    for r, key in enumerate(zip(ids.tolist(), mask.tolist())):
        key = (tuple(key[0]), tuple(key[1]))
        if key not in seen:
            seen[key] = len(first)
            first.append(r)
        rows_of.append(seen[key])
    if len(first) == len(rows_of):
        return None, None
    return torch.tensor(first), torch.tensor(rows_of)


def preallocated_cache(model, capacity: int):
    """A transformers ``DynamicCache`` for ``model`` whose full-attention layers hold their
    keys and values in buffers of ``capacity`` positions, allocated at the first write (batch,
    heads, dtype from it) and filled in place; attention reads the filled part, a view. Other
    layers (sliding windows) stay transformers' own. Writing past ``capacity`` is an error.
    None (the model's own cache) for a model without a config."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    config = getattr(model, "config", None)
    if config is None:
        return None
    cache = DynamicCache(config=config)
    cache.layers = [_in_place_layer()(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


@functools.cache
def _in_place_layer():
    """The class of ``preallocated_cache``'s layers (made once, on first use: transformers is
    imported only then)."""
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers of ``capacity``
        positions, written in place. Cropping and resetting move the filled length; selecting
        batch rows copies them into smaller buffers; repeating or reordering them is refused."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.filled = capacity, 0

        def lazy_initialization(self, key_states, value_states) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads = key_states.shape[:2]
            self.key_buf = key_states.new_empty(batch, heads, self.capacity,
                                                key_states.shape[-1])
            self.value_buf = value_states.new_empty(batch, heads, self.capacity,
                                                    value_states.shape[-1])
            self.is_initialized = True

        def _view(self) -> None:
            self.keys = self.key_buf[:, :, :self.filled]
            self.values = self.value_buf[:, :, :self.filled]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache full: {end} positions, capacity {self.capacity}")
            self.key_buf[:, :, self.filled:end] = key_states
            self.value_buf[:, :, self.filled:end] = value_states
            self.filled = end
            self._view()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.filled

        def get_max_length(self) -> int:
            return self.capacity

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:  # transformers' legacy form: the length to keep
                tokens_to_remove = tokens_to_remove - self.filled
            if tokens_to_remove < 0 and self.is_initialized:
                self.filled = max(0, self.filled + tokens_to_remove)
                self._view()

        def reset(self) -> None:
            self.filled = 0
            if self.is_initialized:
                self._view()

        def batch_select_indices(self, indices) -> None:
            """Keep the batch rows ``indices`` (their filled positions, into new buffers)."""
            if not self.is_initialized:
                return
            for name in ("key_buf", "value_buf"):
                old = getattr(self, name)
                buf = old.new_empty(len(indices), *old.shape[1:])
                buf[:, :, :self.filled] = old[indices, :, :self.filled]
                setattr(self, name, buf)
            self._view()

        def _refuse(self, *args, **kwargs):
            raise NotImplementedError("a preallocated KV cache does not repeat or reorder its"
                                      " batch: build a new one")

        batch_repeat_interleave = reorder_cache = _refuse

    return InPlaceLayer


def nucleus(logits, temperature: float, top_k: int, top_p: float):
    """(candidates, probabilities), each (rows, c): every row's tokens that transformers'
    temperature, top-k and top-p warpers leave, with the probabilities its softmax gives them
    (zeros pad the rows). Computed among the ``top_k`` largest logits (and any tied with the
    k-th, which transformers keeps too), as those warpers compute over the whole vocabulary:
    top-p removes, in ascending order, the tokens whose cumulative probability is at most
    ``1 - top_p``, keeping the likeliest."""
    import torch

    scaled = logits / temperature
    k = min(top_k, scaled.shape[-1])
    vals, cand = scaled.topk(k, dim=-1)
    ties = int((scaled >= vals[:, -1:]).sum(-1).max())  # k, unless the k-th value is tied
    if ties > k:  # a row with fewer ties gets -inf for what lies below its k-th value
        kth = vals[:, -1:]
        vals, cand = scaled.topk(ties, dim=-1)
        vals = vals.masked_fill(vals < kth, float("-inf"))
    probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        asc = probs.flip(-1)
        drop = asc.cumsum(-1) <= 1 - top_p
        drop[:, -1] = False                    # transformers keeps at least one token
        probs = probs.masked_fill(drop.flip(-1), 0.0)
    return cand, probs


def base_generations(home: Home, ref, prompts: Sequence[tuple[str, Sequence[str]]],
                     cfg: GenerationConfig, model=None, tok=None, log=None) -> list[str]:
    """The bare base's bodies for (subject, recipients) prompts, cached under ``home.cache_dir``
    per base fingerprint, prompts and generation settings (the eval's base scores and the
    catalog's cards both compare with them).

    ``model`` (the base, or a PEFT model on it: its adapter is disabled here) and ``tok`` save a
    load; without them the base ``ref`` is loaded only when the cache misses."""
    import hashlib
    import json

    from .home import atomic_write_json

    parts = [bases.read_fingerprint(ref)["digest"], prompts, cfg.key()]
    dtype = str(next(model.parameters()).dtype) if model is not None else "torch.float32"
    if dtype != "torch.float32":  # a base held in bfloat16 samples other bodies (keys of
        parts.append(dtype)       # float32 generations stay as they were)
    key = hashlib.sha256(json.dumps(parts, default=list).encode()).hexdigest()[:24]
    path = home.cache_dir / f"basegen-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if model is None:
        model, tok = bases.load(ref, progress=log)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            out = generate_bodies(model, tok, prompts, cfg)
    else:
        out = generate_bodies(model, tok, prompts, cfg)
    atomic_write_json(path, out)
    return out
