"""A batch's next tokens in one pass: repetition penalty, ignore_eos, temperature, top-k and
top-p as tensor ops over all rows (one softmax and one top-k a step, not a softmax and a sort
per row).

Each row keeps what a row sampled alone gets, bit for bit: every step is elementwise or runs
along the vocabulary of one row (softmax, sort, cumsum), with each row's own temperature and
top_p as float32 like the scalars they replace. Only the draw stays per row: a row's
``torch.multinomial`` takes that row's own seeded generator, so its text depends on its seed and
not on which rows share its batch (one generator drawing for the whole batch would hand each
row its neighbours' leftovers).

The repetition penalty's tokens (the prompt's and those sampled so far) are a (rows, vocab)
mask, marked as tokens are sampled, instead of a Python set per row per step.

Top-p without sorting the vocabulary: sorting 16 rows of a 49k vocabulary costs more than
the rest of the sampling together, while the nucleus is rarely more than a few hundred
tokens. The ``FIRST`` largest probabilities (``topk``, sorted) are the full sort's first values,
and their cumsum its first cumsums (a sequential prefix), so the drop test over those positions
is the full sort's. Where it shows the nucleus ending among them, well inside the mass (so
every later position is dropped too), and not between two equal probabilities (where the
sort's order of ties would decide which token stays), the kept tokens are exactly those at
least as probable as the last kept one. Other rows take the full sort, as before.
"""

from __future__ import annotations

from typing import Sequence

import torch


class BatchSampler:
    """The sampling state of a batch's rows (``Row``s: ``job.sampling``, ``job.prompt_ids``,
    ``gen``); ``keep`` follows the batch when rows leave."""

    FIRST = 1024     # probabilities top-p looks at before it sorts a row whole
    MARGIN = 1e-4    # how far past top_p their mass must be (float32 cumsums err far less)

    def __init__(self, rows: Sequence, eos: set[int], penalty: float) -> None:
        settings = [r.job.sampling for r in rows]
        self.gens = [r.gen for r in rows]
        self.prompts = [r.job.prompt_ids for r in rows]
        self.penalty = penalty
        self.eos = torch.tensor(sorted(eos), dtype=torch.long)
        self.temperature = torch.tensor([s.temperature for s in settings], dtype=torch.float32)
        self.top_p = torch.tensor([s.top_p for s in settings], dtype=torch.float32)
        self.top_k = torch.tensor([s.top_k for s in settings], dtype=torch.long)
        self.no_eos = torch.tensor([s.ignore_eos for s in settings], dtype=torch.bool)
        self.seen: torch.Tensor | None = None   # (rows, vocab) bool, from the first logits' width

    def sample(self, logits: torch.Tensor) -> list[int]:
        """One token per row of ``logits`` (rows, vocab), float32; marks them seen."""
        if self.seen is None:
            self.seen = torch.zeros(logits.shape, dtype=torch.bool)
            for b, ids in enumerate(self.prompts):
                self.seen[b, torch.tensor(ids, dtype=torch.long)] = True
        if self.penalty != 1.0:
            seen = self.seen.nonzero(as_tuple=True)  # (a few hundred a row of the vocabulary)
            picked = logits[seen]
            logits[seen] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        if self.no_eos.any():
            logits[self.no_eos.nonzero(), self.eos] = float("-inf")
        tokens = logits.argmax(-1)
        hot = self.temperature > 0
        scaled = logits / torch.where(hot, self.temperature, 1.0)[:, None]
        self._top_k(scaled, hot)
        probs = torch.softmax(scaled, dim=-1)
        # a temperature so small logits overflow is greedy; a row's softmax is finite exactly
        # where its largest logit is (a pass over the rows' maxima, not over every probability)
        hot &= torch.isfinite(scaled.amax(-1))
        nucleus = hot & (self.top_p < 1.0)
        if nucleus.any():
            probs[nucleus] = self._top_p(probs[nucleus], self.top_p[nucleus, None])
        for b in hot.nonzero().flatten().tolist():
            tokens[b] = torch.multinomial(probs[b], 1, generator=self.gens[b])[0]
        self.seen[torch.arange(len(tokens)), tokens] = True
        return tokens.tolist()

    def _top_k(self, scaled: torch.Tensor, hot: torch.Tensor) -> None:
        """Each sampled row's logits below its ``top_k``-th largest set to -inf, in place (as
        transformers' top-k does: ties with the k-th stay); 0 or the vocabulary: unchanged."""
        vocab = scaled.shape[-1]
        cut = hot & (self.top_k > 0) & (self.top_k < vocab)
        if not cut.any():
            return
        rows = cut.nonzero().flatten()
        k, sub = self.top_k[rows], scaled[rows]
        kth = sub.topk(int(k.max()), dim=-1).values.gather(-1, (k - 1)[:, None])
        scaled[rows] = sub.masked_fill(sub < kth, float("-inf"))

    def _top_p(self, probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
        """``probs`` with each row's tail beyond its ``top_p`` mass zeroed (not renormalized:
        multinomial does not need it)."""
        vocab = probs.shape[-1]
        if self.FIRST >= vocab:
            return _top_p_sorted(probs, top_p)
        first = probs.topk(self.FIRST, dim=-1).values
        before = first.cumsum(-1) - first
        kept = ~(before > top_p)
        n = kept.sum(-1, keepdim=True)                 # the nucleus' size, if it is a prefix
        last, after = first.gather(-1, n - 1), first.gather(-1, n.clamp(max=self.FIRST - 1))
        exact = ((kept == (torch.arange(self.FIRST) < n)).all(-1, keepdim=True)
                 & (before[:, -1:] > top_p + self.MARGIN) & (after < last)).squeeze(-1)
        out = torch.where(probs >= last, probs, 0.0)
        if not exact.all():
            out[~exact] = _top_p_sorted(probs[~exact], top_p[~exact])
        return out

    def keep(self, rows: Sequence[int]) -> None:
        """Only these rows (indices of the current ones) go on."""
        idx = torch.tensor(rows, dtype=torch.long)
        self.gens = [self.gens[i] for i in rows]
        self.prompts = [self.prompts[i] for i in rows]
        self.temperature, self.top_p, self.top_k = (self.temperature[idx], self.top_p[idx],
                                                    self.top_k[idx])
        self.no_eos = self.no_eos[idx]
        if self.seen is not None:
            self.seen = self.seen[idx]

    def extend(self, other: "BatchSampler") -> None:
        """Append ``other``'s rows (rows joining a running batch), after this one's (checked
        and built before anything changes)."""
        if self.seen is None or other.seen is None:  # both sample first, so both have one
            raise ValueError("rows join a batch only after their first token")
        temperature = torch.cat([self.temperature, other.temperature])
        top_p = torch.cat([self.top_p, other.top_p])
        top_k = torch.cat([self.top_k, other.top_k])
        no_eos = torch.cat([self.no_eos, other.no_eos])
        seen = torch.cat([self.seen, other.seen])
        self.gens, self.prompts = self.gens + other.gens, self.prompts + other.prompts
        self.temperature, self.top_p, self.no_eos, self.seen = temperature, top_p, no_eos, seen
        self.top_k = top_k


def _top_p_sorted(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p as the per-row sampler did it: the whole row sorted."""
    sorted_p, order = torch.sort(probs, descending=True)
    sorted_p[sorted_p.cumsum(-1) - sorted_p > top_p] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)
