"""The CPU training loop: length-bucketed batches, loss on body tokens only, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..home import atomic_write_json
from .prompts import Example
from .recipe import Recipe

Progress = Callable[[dict], None]


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB. Linux: VmHWM, the peak of this program's own
    memory (ru_maxrss also counts the parent's resident size at fork, inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_memory() -> bool:
    """Hand the memory freed since (training's activations, gradients, optimizer state) back to
    the system: glibc keeps freed heap pages resident, so a compile's gate would otherwise
    evaluate on top of training's residue. True where ``malloc_trim`` ran (glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # not glibc (or no trim there): nothing to hand back this way; it runs
        return False   # after the adapter is installed, so it must never fail the compile
    return True


def make_batches(examples: Sequence[Example], recipe: Recipe, epoch: int) -> list[list[int]]:
    """Indices grouped so each padded batch holds at most ``batch_tokens`` tokens (of the
    examples' own rows: with ORPO each step also holds their rejected rows, so the schedule,
    and the number of updates, is the plain run's).

    Examples are shuffled (seed + epoch), then sorted by length inside windows of 64 so a batch
    holds examples of similar length (little padding) while the order stays random."""
    rng = random.Random(recipe.seed * 1000 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = 64
    order = [
        i for w in range(0, len(order), window)
        for i in sorted(order[w:w + window], key=lambda i: len(examples[i].input_ids))
    ]
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = len(examples[i].input_ids)
        if cur and max(longest, n) * (len(cur) + 1) > recipe.batch_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def schedule(examples: Sequence[Example], recipe: Recipe) -> list[list[int]]:
    """Every optimizer step's batch for the whole run, fixed by the seed (so resume can skip)."""
    steps: list[list[int]] = []
    full, frac = int(recipe.epochs), recipe.epochs - int(recipe.epochs)
    for epoch in range(math.ceil(recipe.epochs)):
        batches = make_batches(examples, recipe, epoch)
        if epoch == full and frac > 0:
            batches = batches[: max(1, math.ceil(frac * len(batches)))]
        steps.extend(batches)
    return steps


def collate(examples: Sequence[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    # target[b, t] = token t+1 when t+1 is a body position, else -100
    target = torch.full((len(examples), width - 1), -100, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        row = torch.tensor(e.input_ids, dtype=torch.long)
        ids[b, :n] = row
        mask[b, :n] = 1
        start = max(e.prompt_len, 1)
        target[b, start - 1:n - 1] = row[start:n]
    return ids, mask, target


@contextmanager
def layer_slice(causal_lm, start: int, stop: int | None, final_norm: bool = True):
    """Run only decoder layers [start:stop] (and the final norm when ``final_norm``): the
    decoder then maps inputs_embeds = hidden states after layer ``start`` to those after
    ``stop``. Works for any decoder with ``layers`` and ``norm`` (Llama, Qwen2, ...)."""
    import torch

    dec = causal_lm.get_decoder()
    layers, norm = dec.layers, dec.norm
    dec.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        dec.norm = torch.nn.Identity()
    try:
        yield dec
    finally:
        dec.layers, dec.norm = layers, norm


@contextmanager
def lora_compute(model, mode: str):
    """Inside, every plain LoRA layer of ``model`` (PEFT's ``lora.Linear``: one active adapter,
    not merged, no variant such as DoRA, no bias on B) adds its update with one fused multiply-add,
    ``addmm(base(x), dropout(x) @ A.T, (scale * B).T)``, instead of PEFT's separate scale, add
    and casts: in float32 (``mode`` "float32", the numbers of PEFT's forward to float32
    rounding: the scale moves from the product onto B) or in the base output's dtype ("base":
    with a bfloat16 base no float32 copies of the activations, and LoRA's gradients rounded to
    bfloat16 before they reach the float32 weights). "peft" leaves PEFT's forward."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    def fused(self, x, *args, **kwargs):
        if (kwargs or args or self.disable_adapters or self.merged
                or list(self.active_adapters) != ["default"]):
            return type(self).forward(self, x, *args, **kwargs)
        result = self.base_layer(x)
        dtype = torch.float32 if mode == "float32" else result.dtype
        a = self.lora_A["default"].weight.to(dtype)
        b = (self.lora_B["default"].weight * self.scaling["default"]).to(dtype)
        # cast, then dropout, as PEFT does: the same masks and scale for the same seed
        h = self.lora_dropout["default"](x.reshape(-1, x.shape[-1]).to(dtype))
        out = torch.addmm(result.reshape(-1, result.shape[-1]).to(dtype), h @ a.t(), b.t())
        return out.to(result.dtype).view(result.shape)

    def plain(m) -> bool:  # fixed while training: checked once, not at every call
        return ("default" in m.lora_A and "default" not in m.lora_variant
                and m.lora_B["default"].bias is None)  # lora_bias: PEFT's forward

    # a layer whose forward is already replaced on the instance (a hook) is left as it is
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)
              and "forward" not in m.__dict__ and plain(m)] if mode != "peft" else []
    try:
        for m in layers:
            m.forward = fused.__get__(m)
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


def num_layers(causal_lm) -> int:
    return len(causal_lm.get_decoder().layers)


def cache_lower(model, examples: Sequence[Example], cut: int, pad_id: int,
                batch_tokens: int) -> list:
    """Hidden states after the first ``cut`` (frozen) layers, one [len, hidden] tensor per
    example, computed once without gradients. Right padding + causal attention make each
    example's states independent of its batch, so the cache is exact."""
    import torch

    inner = model.get_base_model()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list = [None] * len(examples)
    with torch.no_grad(), layer_slice(inner, 0, cut, final_norm=False) as dec:
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and len(examples[order[j]].input_ids) * (j - i + 1) <= batch_tokens:
                j += 1
            j = max(j, i + 1)
            idx = order[i:j]
            ids, mask, _ = collate([examples[k] for k in idx], pad_id)
            hidden = dec(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, k in enumerate(idx):
                out[k] = hidden[row, : len(examples[k].input_ids)].clone()
            i = j
    return out


def _chunked_cross_entropy(head, h, target, chunk: int):
    """Summed cross-entropy of ``head(h)`` computed ``chunk`` rows at a time, each chunk's logits
    recomputed in the backward pass: the [rows, vocab] logits never exist all at once."""
    from torch.utils.checkpoint import checkpoint
    import torch.nn.functional as F

    def part(x, t):
        return F.cross_entropy(head(x).float(), t, reduction="sum")

    total = None
    for i in range(0, h.shape[0], chunk):
        s = checkpoint(part, h[i:i + chunk], target[i:i + chunk], use_reentrant=False)
        total = s if total is None else total + s
    return total


def body_loss(model, ids, mask, target, cached=None, cut: int = 0, loss_chunk: int = 0):
    """Mean cross-entropy over body tokens; the vocabulary projection runs only where there
    are labels (a few hundred rows instead of every padded position). With ``cached`` lower
    hidden states, only the layers from ``cut`` up run. ``loss_chunk`` > 0 projects that many
    rows at a time (see ``_chunked_cross_entropy``)."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cached is None:
        hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    else:
        width = ids.shape[1]
        embeds = torch.zeros(len(cached), width, cached[0].shape[-1], dtype=cached[0].dtype)
        for row, h in enumerate(cached):
            embeds[row, : h.shape[0]] = h
        with layer_slice(inner, cut, None) as dec:
            hidden = dec(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    sel = target != -100
    h = hidden[:, :-1][sel]
    n = int(sel.sum())
    head = inner.get_output_embeddings()
    if loss_chunk and n > loss_chunk:
        return _chunked_cross_entropy(head, h, target[sel], loss_chunk) / max(n, 1), n
    return F.cross_entropy(head(h).float(), target[sel]), n


def orpo_loss(model, ids, mask, target, pairs: int, weight: float):
    """ORPO (Hong et al., 2024) on ``pairs`` examples whose rows come first in the batch and
    whose rejected rows follow in the same order: the mean cross-entropy over the chosen body
    tokens (as ``body_loss``) plus ``weight`` x the mean over pairs of -log sigmoid(log odds of
    the chosen body - log odds of the rejected one), each body's odds from its mean per-token
    probability p as p / (1 - p). No reference model. Returns (loss, chosen body tokens)."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    sel = target != -100
    row = sel.nonzero()[:, 0]
    logits = inner.get_output_embeddings()(hidden[:, :-1][sel]).float()
    lp = -F.cross_entropy(logits, target[sel], reduction="none")
    sums = torch.zeros(ids.shape[0]).index_add(0, row, lp)
    counts = torch.zeros(ids.shape[0]).index_add(0, row, torch.ones_like(lp))
    n = int(counts[:pairs].sum())
    nll = -sums[:pairs].sum() / max(n, 1)
    mean = (sums / counts.clamp(min=1)).clamp(max=-1e-6)  # log p < 0: finite odds
    log_odds = mean - torch.log(-torch.expm1(mean))
    both = (counts[:pairs] > 0) & (counts[pairs:2 * pairs] > 0)  # a pair needs two bodies
    terms = -F.logsigmoid(log_odds[:pairs] - log_odds[pairs:2 * pairs])
    ratio = terms[both].mean() if bool(both.any()) else terms.sum() * 0.0
    return nll + weight * ratio, n


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    body_tokens: int = 0
    train_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    cache_seconds: float = 0.0


def save_checkpoint(run_dir: Path, model, optimizer, state: TrainState) -> None:
    """Write a checkpoint into a fresh folder, then swap it in: never a half-written one."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = {k: v.detach().contiguous()
          for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    save_file(sd, str(tmp / "lora.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", state.__dict__)
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, optimizer) -> TrainState | None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ck = run_dir / "checkpoint"
    if not (ck / "state.json").exists():
        ck = run_dir / "checkpoint.old"  # crashed between the two renames of save_checkpoint
        if not (ck / "state.json").exists():
            return None
    set_peft_model_state_dict(model, load_file(str(ck / "lora.safetensors")))
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
    state = TrainState(**json.loads((ck / "state.json").read_text()))
    state.resumed_from = state.step
    return state


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / (recipe.warmup_steps + 1)
    span = max(1, total - recipe.warmup_steps)
    return recipe.lr * max(0.0, 1.0 - (step - recipe.warmup_steps) / span) * 0.9 + recipe.lr * 0.1


def train(model, examples: Sequence[Example], recipe: Recipe, pad_id: int, run_dir: Path,
          resume: bool = False, progress: Progress | None = None,
          stop_after: int | None = None) -> TrainState:
    """Train the LoRA parameters of ``model`` (a PeftModel) in place. ``stop_after`` ends the run
    early after that many steps (tests use it to simulate an interruption)."""
    import torch

    torch.manual_seed(recipe.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    state = (load_checkpoint(run_dir, model, optimizer) if resume else None) or TrainState()
    steps = schedule(examples, recipe)
    cut, cache = 0, None
    if recipe.lora_layers and recipe.lora_layers < num_layers(model.get_base_model()):
        cut = num_layers(model.get_base_model()) - recipe.lora_layers
        t_cache = time.perf_counter()
        cache = cache_lower(model, examples, cut, pad_id, recipe.batch_tokens)
        state.cache_seconds = round(time.perf_counter() - t_cache, 2)
    model.train()
    base = model.get_base_model()
    attention = base.config._attn_implementation
    if recipe.attention != attention:
        base.set_attn_implementation(recipe.attention)
    if recipe.grad_checkpoint:
        base.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    t_start = time.perf_counter() - state.train_seconds
    try:
        with lora_compute(model, recipe.lora_compute):
            _loop(model, examples, recipe, pad_id, run_dir, steps, optimizer, params, state,
                  t_start, progress, stop_after, cache, cut)
    except KeyboardInterrupt:
        if state.step > (state.resumed_from or 0):
            save_checkpoint(run_dir, model, optimizer, state)
        raise
    finally:
        if recipe.grad_checkpoint:
            base.gradient_checkpointing_disable()
        if recipe.attention != attention:
            base.set_attn_implementation(attention)
    model.eval()
    return state


def _loop(model, examples, recipe, pad_id, run_dir, steps, optimizer, params, state, t_start,
          progress, stop_after, cache, cut) -> None:
    import torch

    total = len(steps)
    for step in range(state.step, total):
        batch = [examples[i] for i in steps[step]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, recipe)
        if recipe.orpo:  # the chosen rows, then the rejected ones in the same order
            ids, mask, target = collate(batch + [Example(e.rejected_ids, e.prompt_len)
                                                 for e in batch], pad_id)
            loss, n_body = orpo_loss(model, ids, mask, target, len(batch), recipe.orpo)
        else:
            ids, mask, target = collate(batch, pad_id)
            cached = [cache[i] for i in steps[step]] if cache is not None else None
            loss, n_body = body_loss(model, ids, mask, target, cached, cut, recipe.loss_chunk)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        state.step = step + 1
        state.tokens_seen += int(mask.sum())
        state.body_tokens += n_body
        state.losses.append(round(loss.item(), 4))
        state.train_seconds = time.perf_counter() - t_start
        if progress:
            done_new = state.step - (state.resumed_from or 0)
            rate = state.train_seconds / max(1, state.step)
            progress({
                "step": state.step, "total": total, "loss": state.losses[-1],
                "tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
                "eta_s": rate * (total - state.step), "new_steps": done_new,
            })
        if state.step % recipe.checkpoint_every == 0 and state.step < total:
            save_checkpoint(run_dir, model, optimizer, state)
        if stop_after is not None and state.step >= stop_after and state.step < total:
            raise KeyboardInterrupt(f"stopped after step {state.step}")
