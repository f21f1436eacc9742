"""Every loaded adapter's LoRA stacked per adapted Linear, for batches that mix adapters.

PEFT's mixed batch (``adapter_names``) loops, in every LoRA layer, over the batch's distinct
adapters: 12 adapters x 4 modules x 30 layers are 1440 small matmuls per decode step, each
with its own gather and scatter of the rows. Here (the CPU analogue of Punica's BGMV and of
S-LoRA) each adapted Linear of the bare base has the loaded adapters' factors stacked, once,
when an adapter is added or removed, and a forward hook adds every row's own delta with two
batched matmuls over factors gathered per row:

    y[b] = base(x[b]) + (x[b] @ A[s]^T) @ (scale[s] * B[s])^T,   s = row b's slot

Slot 0 is zeros: the bare base's rows. Ranks differ between adapters (a recipe's rank,
``rank_pattern``): every slot is padded with zeros to the module's largest rank, and an adapter
that does not adapt a module has zeros there; zero rows of A and columns of B add nothing, so
a row's delta is its own adapter's alone. The scale is folded into B when stacking (one
tensor less to gather; ``alpha / r`` of the adapter's own config, via ``idiolect.lora``).

The factors gathered for a batch's rows are kept while its rows stay the same (a decode step
reuses them), so a step pays two bmm per module and no copy of weights; they hold one copy of
a row's adapter per row (16 rows of rank-16 q/k/v/o adapters on SmolLM2-135M: about 120 MB),
and reading them is most of what a step costs beyond the bare base's.

Only plain LoRA on ``nn.Linear`` is stacked: a variant that changes the forward (DoRA, LoRA
bias, trained modules, ...) is refused when loading, rather than served wrong; PEFT's path
(``lora="peft"``) serves those. Weights are read from safetensors only, never from a pickle.
Adding, removing and forward passes all run on the batcher's thread.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import lora
from ..errors import IdiolectError
from ..manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .models import BASE_ROW

# adapter_config keys of PEFT features that change the forward beyond y + scale * B A x
REFUSED = ("use_dora", "lora_bias", "modules_to_save", "fan_in_fan_out", "trainable_token_indices",
           "alora_invocation_tokens", "layer_replication", "target_parameters", "use_qalora",
           "use_bdlora", "arrow_config", "kasa_config", "monteclora_config", "velora_config")


def read_adapter(folder: Path, model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A^T (in, r), scale * B^T (r, out))} of a PEFT LoRA folder, in the dtype of
    ``model``'s Linear it adapts; checked against those Linears' shapes."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    refused = [k for k in REFUSED if cfg.get(k)]
    if cfg.get("peft_type", "LORA") != "LORA":
        refused.append(f"peft_type {cfg.get('peft_type')}")
    if cfg.get("bias", "none") != "none":
        refused.append(f"bias {cfg['bias']}")
    if refused:
        raise IdiolectError(f"{folder.name}: stacked LoRA serves plain LoRA only, not"
                            f" {', '.join(refused)} (serve it with --lora peft)")
    pairs, others = lora.group(load_file(str(folder / ADAPTER_WEIGHTS)))
    if others or lora.incomplete(pairs):
        bad = others or lora.incomplete(pairs)
        raise IdiolectError(f"{folder.name}: {bad[0]!r} is not half of a LoRA A/B pair")
    out = {}
    for module, p in pairs.items():
        try:
            linear = model.get_submodule(module)
        except AttributeError:
            raise IdiolectError(f"{folder.name}: the base has no module {module!r}") from None
        a, b = p[lora.A], p[lora.B]
        rank = a.shape[0]
        if not isinstance(linear, torch.nn.Linear) or a.shape != (rank, linear.in_features) \
                or b.shape != (linear.out_features, rank):
            raise IdiolectError(f"{folder.name}: {module}'s LoRA ({tuple(a.shape)},"
                                f" {tuple(b.shape)}) does not fit the base's {linear}")
        dtype = linear.weight.dtype
        scale = lora.scale(cfg, module, rank)
        out[module] = (a.t().to(dtype).contiguous(), (b.t() * scale).to(dtype).contiguous())
    return out


def _rank_to(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """``t`` with its rank dimension (1 or 2 of 3) cut or zero-padded to ``rank``."""
    have = t.shape[dim]
    if have >= rank:
        return t.narrow(dim, 0, rank)
    return F.pad(t, (0, rank - have) if dim == 2 else (0, 0, 0, rank - have))


class StackedLoRA:
    """The loaded adapters' factors, stacked per adapted Linear of ``model``, and the hooks that
    add them to the rows of a batch (``rows``)."""

    def __init__(self, model) -> None:
        self.model = model
        self._empty()

    def _empty(self) -> None:
        self.names: list[str] = []                    # slot i + 1 holds names[i]
        self._ranks: dict[str, dict[str, int]] = {}   # name -> module -> its rank
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (S,in,r), (S,r,out)
        self._hooks: dict[str, object] = {}
        self._rows: torch.Tensor | None = None        # the running batch's slot per row
        self._key: tuple[int, ...] | None = None      # the slots the gathered factors are of
        self._gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ loading
    def add(self, name: str, folder: Path) -> None:
        """Stack the adapter in ``folder`` as ``name`` (read and checked before anything moves)."""
        if name in self.names or name == BASE_ROW:
            raise ValueError(f"adapter name {name!r} is taken")
        factors = read_adapter(Path(folder), self.model)
        self.names.append(name)
        self._ranks[name] = {m: a.shape[1] for m, (a, _) in factors.items()}
        slots = len(self.names) + 1
        for module in set(self._stacks) | set(factors):
            linear = self.model.get_submodule(module)
            old = self._stacks.get(module) or (
                linear.weight.new_zeros(slots - 1, linear.in_features, 0),
                linear.weight.new_zeros(slots - 1, 0, linear.out_features))
            rank = self._rank(module)
            a, b = factors.get(module) or (old[0].new_zeros(linear.in_features, 0),
                                           old[1].new_zeros(0, linear.out_features))
            self._stacks[module] = (
                torch.cat([_rank_to(old[0], rank, 2), _rank_to(a[None], rank, 2)]),
                torch.cat([_rank_to(old[1], rank, 1), _rank_to(b[None], rank, 1)]))
            if module not in self._hooks:
                self._hooks[module] = linear.register_forward_hook(self._hook(module))
        self._forget_gathered()

    def remove(self, name: str) -> None:
        """Unstack adapter ``name``: the later slots move down one, the ranks shrink to fit."""
        slot = self.names.index(name) + 1
        del self.names[slot - 1], self._ranks[name]
        keep = torch.tensor([s for s in range(len(self.names) + 2) if s != slot])
        for module in list(self._stacks):
            rank = self._rank(module)
            if rank == 0:  # no adapter left adapts it
                del self._stacks[module]
                self._hooks.pop(module).remove()
                continue
            a, b = self._stacks[module]
            self._stacks[module] = (_rank_to(a[keep], rank, 2).contiguous(),
                                    _rank_to(b[keep], rank, 1).contiguous())
        self._forget_gathered()

    def clear(self) -> None:
        """Unstack everything and take the hooks off: the model is the bare base again."""
        for hook in self._hooks.values():
            hook.remove()
        self._empty()

    def _rank(self, module: str) -> int:
        return max((r.get(module, 0) for r in self._ranks.values()), default=0)

    def _forget_gathered(self) -> None:
        self._key, self._gathered = None, {}

    # ------------------------------------------------------------------ forward passes
    @contextmanager
    def rows(self, names: Sequence[str]):
        """Forward passes inside add row b's adapter ``names[b]`` (``BASE_ROW``: none)."""
        unknown = {n for n in names if n != BASE_ROW and n not in self.names}
        if unknown:
            raise KeyError(f"adapters not loaded: {sorted(unknown)}")
        slots = tuple(0 if n == BASE_ROW else self.names.index(n) + 1 for n in names)
        if slots != self._key:  # other rows than the last pass's: gather their factors anew
            self._key, self._gathered = slots, {}
        # a batch of bare-base rows only: the hooks add nothing
        self._rows = torch.tensor(slots) if any(slots) else None
        try:
            yield
        finally:
            self._rows = None  # a forward outside ``rows`` is the bare base's

    def _hook(self, module: str):
        def add_rows_deltas(linear, args, output):
            if self._rows is None:
                return output
            x = args[0]
            if x.dim() != 3 or x.shape[0] != self._rows.shape[0]:
                raise RuntimeError(f"{module}: input {tuple(x.shape)} is not one (tokens, features)"
                                   f" per each of the batch's {self._rows.shape[0]} rows")
            gathered = self._gathered.get(module)
            if gathered is None:
                a, b = self._stacks[module]
                gathered = self._gathered[module] = (a[self._rows], b[self._rows])
            return torch.baddbmm(output, torch.bmm(x, gathered[0]), gathered[1])
        return add_rows_deltas
