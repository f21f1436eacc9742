"""Prompt building shared by training, evaluation and drafting: subject + recipients -> body.

With a chat template the instruction is the user turn and the body the assistant turn; without
one, a plain header block. Training sees exactly the prompt that generation later uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

INSTRUCTION = "Write the body of this message in my own voice.\nTo: {to}\nSubject: {subject}"


def instruction(subject: str, to: Sequence[str]) -> str:
    return INSTRUCTION.format(to=", ".join(to) if to else "(none)", subject=subject or "(none)")


def prompt_text(tokenizer, subject: str, to: Sequence[str]) -> str:
    text = instruction(subject, to)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text + "\n\n"


def completion_text(tokenizer, subject: str, to: Sequence[str], body: str) -> str:
    """What follows the prompt in a training example: the body and the end-of-turn marker."""
    prompt = prompt_text(tokenizer, subject, to)
    if tokenizer.chat_template:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction(subject, to)},
             {"role": "assistant", "content": body}],
            tokenize=False,
        )
        if full.startswith(prompt):
            return full[len(prompt):]
    return body + (tokenizer.eos_token or "")


@dataclass
class Example:
    input_ids: list[int]
    prompt_len: int          # labels are the tokens from here on

    @property
    def body_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode(tokenizer, subject: str, to: Sequence[str], body: str, max_tokens: int) -> Example:
    """Token ids of prompt + completion, truncated to ``max_tokens`` (the body end is cut)."""
    p = tokenizer(prompt_text(tokenizer, subject, to), add_special_tokens=False)["input_ids"]
    c = tokenizer(completion_text(tokenizer, subject, to, body), add_special_tokens=False)["input_ids"]
    if len(p) >= max_tokens - 8:  # a pathological subject: keep its tail, leave room for a body
        p = p[-(max_tokens // 2):]
    ids = (p + c)[:max_tokens]
    return Example(ids, len(p))
