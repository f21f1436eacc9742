"""A score for sense: does a body answer its subject? A stronger local model judges.

The style scores reward style markers: a body can carry its author's habits and still not make
sense for its subject. Here a *judge* (a local instruct model, by default Qwen2.5-Coder-0.5B)
is shown a subject and two bodies, A and B, and asked which one was written for that subject;
its answer is read from the next-token probabilities of "A" and "B", and every pair is asked in
both orders so that a preference for a position cancels.

- ``fit`` of a body: P(the judge picks it) against a *distractor*, a real message of the same
  user written for another subject. A real message scores high (it was written for its
  subject); a fluent body about something else scores near 0.5 or below.
- ``sense`` of a set of bodies: the mean fit over the eval prompts, with a bootstrap interval;
  the user's own held-out messages give the ceiling, the bare base a reference.
- ``tells_apart``: P(the judge picks the real body over a generated one for the same subject):
  0.5 means it cannot tell them apart.

Nothing leaves the machine: the judge is a base registered in the home.

Measured (bench/results/sense_ab_judge.json): Qwen2.5-Coder-0.5B-Instruct answers "A" with about
0.62 whatever the bodies, so both orders average to 0.5 for real, generated and mismatched
bodies alike: at this size the A-or-B question carries no signal. ``subject_fit`` asks the same
model a question it can answer: how much more likely a body is after its own subject than after
another one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

QUESTION = ("Here is the subject line of a message and two candidate bodies. Exactly one of them"
            " was written for this subject. Which one? Answer with the letter A or B only.\n\n"
            "Subject: {subject}\n\n--- Body A ---\n{a}\n\n--- Body B ---\n{b}")


@dataclass
class JudgeConfig:
    base: str = "qwen2.5-coder-0.5b"
    max_body_tokens: int = 160   # each body cut to this many tokens (the prompt stays short)
    batch_size: int = 4
    seed: int = 0


class Judge:
    """A causal LM asked A-or-B questions; ``prefer(subject, a, b)`` is P(A) with the order
    effect removed (the mean of asking (a, b) and (b, a))."""

    def __init__(self, model, tokenizer, cfg: JudgeConfig | None = None) -> None:
        self.model, self.tok, self.cfg = model, tokenizer, cfg or JudgeConfig()
        self.ids = [self._letter_id(x) for x in ("A", "B")]

    def _letter_id(self, letter: str) -> int:
        ids = self.tok.encode(letter, add_special_tokens=False)
        return ids[-1]

    def _cut(self, body: str) -> str:
        ids = self.tok.encode(body.strip(), add_special_tokens=False)[: self.cfg.max_body_tokens]
        return self.tok.decode(ids)

    def _prompt(self, subject: str, a: str, b: str) -> str:
        text = QUESTION.format(subject=subject, a=self._cut(a) or "(empty)",
                               b=self._cut(b) or "(empty)")
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)
        return text + "\nAnswer:"

    def _p_first(self, prompts: list[str]) -> list[float]:
        """P("A") / (P("A") + P("B")) for the next token of each prompt."""
        import torch

        old = self.tok.padding_side
        self.tok.padding_side = "left"
        out: list[float] = []
        try:
            for i in range(0, len(prompts), self.cfg.batch_size):
                enc = self.tok(prompts[i:i + self.cfg.batch_size], return_tensors="pt",
                               padding=True, add_special_tokens=False)
                with torch.no_grad():
                    logits = self.model(**enc).logits[:, -1, :].float()
                two = torch.log_softmax(logits[:, self.ids], dim=-1)
                out += two[:, 0].exp().tolist()
        finally:
            self.tok.padding_side = old
        return out

    def prefer(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """For each (subject, a, b): P(the judge picks a), averaged over both orders."""
        prompts = [p for s, a, b in items for p in (self._prompt(s, a, b), self._prompt(s, b, a))]
        p = self._p_first(prompts)
        return [(p[2 * k] + (1.0 - p[2 * k + 1])) / 2 for k in range(len(items))]


def distractors(subjects: Sequence[str], pool: Sequence[tuple[str, str]], seed: int = 0
                ) -> list[str]:
    """For each subject, a real body from ``pool`` ((subject, body) of the same user) written
    for another subject; seeded."""
    rng = random.Random(seed)
    out = []
    for s in subjects:
        choices = [b for subj, b in pool if subj.strip().lower() != s.strip().lower()]
        out.append(rng.choice(choices) if choices else "")
    return out


def sense(judge: Judge, subjects: Sequence[str], bodies: Sequence[str],
          pool: Sequence[tuple[str, str]], seed: int = 0) -> dict:
    """The sense score of a set of bodies (one per subject): mean fit against distractors, its
    bootstrap interval, and each body's fit."""
    from .intervals import mean_interval

    d = distractors(subjects, pool, seed)
    fits = judge.prefer(list(zip(subjects, bodies, d)))
    return {"score": sum(fits) / len(fits), "interval": mean_interval(fits, seed=seed),
            "fits": [round(f, 4) for f in fits], "n": len(fits)}


def tells_apart(judge: Judge, subjects: Sequence[str], real: Sequence[str],
                generated: Sequence[str], seed: int = 0) -> dict:
    """How often the judge picks the real body over a generated one for the same subject."""
    from .intervals import mean_interval

    p = judge.prefer(list(zip(subjects, real, generated)))
    return {"score": sum(p) / len(p), "interval": mean_interval(p, seed=seed), "n": len(p)}


def _body_logprobs(model, tok, prompts: Sequence[str], bodies: Sequence[str],
                   max_body_tokens: int, batch_size: int = 4, share_prompts: bool = True
                   ) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each body's first tokens after its prompt.
    Bodies asked after the same prompt (``draft.self_fit``: every candidate after each subject)
    share one forward pass of it: its keys and values are computed once and repeated across
    those bodies, instead of once per body; rows with a prompt of their own are batched whole
    (every row, with ``share_prompts`` False: the reference ``bench/best_of_speed.py`` times)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for p, b in zip(prompts, bodies):
        rows.append((tok.encode(p, add_special_tokens=False),
                     tok.encode(b.strip(), add_special_tokens=False)[:max_body_tokens]
                     or [tok.eos_token_id]))
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    out: list[tuple[float, int] | None] = [None] * len(rows)
    alone = []
    for idx in groups.values():
        if share_prompts and len(idx) > 1 and len(rows[idx[0]][0]) > 1:
            for k in range(0, len(idx), max(batch_size, 8)):
                part = idx[k:k + max(batch_size, 8)]
                got = _after_shared_prompt(model, rows[part[0]][0], [rows[i][1] for i in part], pad)
                if got is None:  # the model keeps no cache: each row whole, from now on
                    alone += idx[k:]
                    share_prompts = False
                    break
                for i, g in zip(part, got):
                    out[i] = g
        else:
            alone += idx
    alone.sort()
    for k in range(0, len(alone), batch_size):
        part = alone[k:k + batch_size]
        for i, g in zip(part, _batched_rows(model, [rows[i] for i in part], pad)):
            out[i] = g
    return out


def _batched_rows(model, rows: list[tuple[list[int], list[int]]], pad: int
                  ) -> list[tuple[float, int]]:
    """``_body_logprobs`` of (prompt ids, body ids) rows, right-padded into one batch."""
    import torch

    width = max(len(pi) + len(bi) for pi, bi in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (pi, bi) in enumerate(rows):  # right padding: positions stay as in one row
        seq = pi + bi
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    # logits only from the first body-predicting position on (the prompts' are not read)
    first = min(len(pi) for pi, _ in rows) - 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width - first).logits
    return [_summed(logits[r], torch.arange(len(pi) - 1, len(pi) + len(bi) - 1) - first, bi)
            for r, (pi, bi) in enumerate(rows)]


def _after_shared_prompt(model, prompt: list[int], bodies: list[list[int]], pad: int
                         ) -> list[tuple[float, int]] | None:
    """``_body_logprobs`` of ``bodies`` after one ``prompt`` (2 tokens or more): the prompt but
    its last token runs once, its cache is repeated for each body, and each body row reads
    [last prompt token] + body, right-padded (a row's positions are those of the full row).
    None when the model returns no cache that can be repeated."""
    import torch

    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True,
                      logits_to_keep=1).past_key_values  # only the cache is read
        if not hasattr(cache, "batch_repeat_interleave"):
            return None
        cache.batch_repeat_interleave(len(bodies))
        width = 1 + max(len(b) for b in bodies)
        ids = torch.full((len(bodies), width), pad)
        mask = torch.zeros((len(bodies), len(prompt) - 1 + width), dtype=torch.long)
        mask[:, :len(prompt) - 1] = 1
        for r, b in enumerate(bodies):
            ids[r, :1 + len(b)] = torch.tensor(prompt[-1:] + b)
            mask[r, len(prompt) - 1:len(prompt) + len(b)] = 1
        logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                       use_cache=False).logits
    return [_summed(logits[r], torch.arange(len(b)), b) for r, b in enumerate(bodies)]


def _summed(logits, pos, body: list[int]) -> tuple[float, int]:
    """The summed log-probability of ``body`` read at ``pos`` of one row's ``logits``."""
    import torch
    import torch.nn.functional as F

    logp = F.log_softmax(logits[pos].float(), -1)
    return float(logp[torch.arange(len(body)), torch.tensor(body)].sum()), len(body)


def subject_fit(model, tok, subjects: Sequence[str], bodies: Sequence[str],
                other_subjects: Sequence[str], max_body_tokens: int = 160,
                seed: int = 0) -> dict:
    """How much a body answers its own subject: the mean per-token log-likelihood ratio
    log P(body | its subject) - log P(body | another subject of the same user), in nats per
    token, under a reader model; with a bootstrap interval over the bodies. Generic fluent text
    that would follow any subject scores near 0; a body written for its subject, above."""
    from ..compile.prompts import prompt_text
    from .intervals import mean_interval

    own = _body_logprobs(model, tok, [prompt_text(tok, s, []) for s in subjects], bodies,
                         max_body_tokens)
    other = _body_logprobs(model, tok, [prompt_text(tok, s, []) for s in other_subjects], bodies,
                           max_body_tokens)
    per = [(a - b) / max(n, 1) for (a, n), (b, _) in zip(own, other)]
    return {"score": sum(per) / len(per), "interval": mean_interval(per, seed=seed),
            "per_body": [round(x, 4) for x in per], "n": len(per)}


#: reader tokens of each body for subject fit (real and generated alike; bench/levers.py's)
FIT_TOKENS = 64


def read_sense(home, reader: str, subjects: Sequence[str], pool: Sequence[str],
               bodies: dict[str, Sequence[str]], log=None) -> dict:
    """Subject fit (under the installed base ``reader``) and subject overlap of each named set
    of ``bodies`` (one per subject), each body also read after another subject drawn from
    ``pool`` (the user's reference messages' subjects, seeded as bench/levers.py draws them)."""
    from ..bases import load as bases

    model, tok = bases.load(bases.resolve(home, reader), progress=log)
    others = other_subjects(subjects, pool, seed=1)
    out: dict = {"reader": reader, "tokens": FIT_TOKENS}
    for name, texts in bodies.items():
        if log:
            log(f"sense: reading the {name} bodies with {reader}")
        fit = subject_fit(model, tok, subjects, texts, others, max_body_tokens=FIT_TOKENS)
        ov = subject_overlap(subjects, texts)
        out[name] = {"subject_fit": fit["score"], "interval": fit["interval"],
                     "subject_overlap": ov["score"]}
    return out


def other_subjects(subjects: Sequence[str], pool: Sequence[str], seed: int = 0) -> list[str]:
    """For each subject, another subject of the same user (seeded), never the same one."""
    rng = random.Random(seed)
    out = []
    for s in subjects:
        choices = [x for x in pool if x.strip().lower() != s.strip().lower()]
        out.append(rng.choice(choices) if choices else "")
    return out


#: words of a subject that say nothing about its topic (mail and patch boilerplate)
_SUBJECT_STOP = frozenset("patch patches with from that this when into have does should make more"
                          " than what your about also only just some them then there were will"
                          " would".split())


def subject_words(subject: str) -> set[str]:
    """The topic words of a subject: lowercase runs of letters and digits of 4 or more
    characters, less mail and patch boilerplate ("[PATCH v2 3/5]", "Re:")."""
    import re

    return {w for w in re.findall(r"[a-z0-9]{4,}", subject.lower()) if w not in _SUBJECT_STOP}


def subject_overlap(subjects: Sequence[str], bodies: Sequence[str], seed: int = 0) -> dict:
    """A model-free look at what subject fit rewards: the mean share of each subject's topic
    words that its body repeats (subjects without any are skipped), with a bootstrap interval.
    A body far above the real bodies' share parrots its subject rather than answering it."""
    import re

    from .intervals import mean_interval

    per = []
    for s, b in zip(subjects, bodies):
        words = subject_words(s)
        if words:
            body = set(re.findall(r"[a-z0-9]{4,}", b.lower()))
            per.append(len(words & body) / len(words))
    if not per:
        return {"score": None, "interval": None, "n": 0}
    return {"score": sum(per) / len(per), "interval": mean_interval(per, seed=seed),
            "n": len(per)}

