"""Prompt building shared by training, evaluation and drafting: subject + recipients -> body.

With a chat template the instruction is the user turn and the body the assistant turn; without
one, a plain header block. Training sees exactly the prompt that generation later uses.

Shots (``Recipe.shots``, ``compile/retrieve.py``): some of the user's own earlier messages, each
as its subject and the opening of its body (``shot_tokens`` tokens), placed before the
instruction. A prompt without shots is exactly the prompt of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

INSTRUCTION = "Write the body of this message in my own voice.\nTo: {to}\nSubject: {subject}"
SHOTS_HEADER = "Some messages I wrote before:"
#: the prompt's own words, which no body holds: a small model that goes on past its body into
#: the pattern of its prompt (seen with shots: 2 of 60 drafts) is cut where it starts them
PROMPT_ECHOES = (INSTRUCTION.split(" in my own voice", 1)[0], SHOTS_HEADER)
#: where a body is cut (``cut_echo``) or a served row stops: a line that starts with them
ECHO_LINES = tuple("\n" + e for e in PROMPT_ECHOES)
#: a shot: (subject, body); its body is cut to ``shot_tokens`` tokens when the prompt is built
Shot = tuple[str, str]
SHOT_TOKENS = 64


def instruction(subject: str, to: Sequence[str], shots: Sequence[Shot] = ()) -> str:
    text = INSTRUCTION.format(to=", ".join(to) if to else "(none)", subject=subject or "(none)")
    if not shots:
        return text
    parts = [SHOTS_HEADER] + [f"Subject: {s or '(none)'}\n{b.strip()}" for s, b in shots]
    return "\n\n".join(parts) + "\n\n" + text


def cut_echo(body: str) -> str:
    """``body`` (stripped) up to the first line after its start that begins with one of
    ``PROMPT_ECHOES``; unchanged without one (a body that opens with them is left whole: not
    cut to nothing)."""
    body = body.strip()
    at = min((i for i in map(body.find, ECHO_LINES) if i >= 0), default=-1)
    return body if at < 0 else body[:at].rstrip()


def cut_shots(tokenizer, shots: Sequence[Shot], shot_tokens: int = SHOT_TOKENS) -> list[Shot]:
    """Each shot's body cut to its first ``shot_tokens`` tokens (a marker where cut)."""
    out = []
    for subject, body in shots:
        ids = tokenizer(body, add_special_tokens=False)["input_ids"]
        if len(ids) > shot_tokens:
            body = tokenizer.decode(ids[:shot_tokens]).rstrip("\ufffd").rstrip() + " [...]"
        out.append((subject, body))
    return out


def prompt_text(tokenizer, subject: str, to: Sequence[str], shots: Sequence[Shot] = ()) -> str:
    """The prompt; ``shots`` are used as given (cut them first with ``cut_shots``)."""
    text = instruction(subject, to, shots)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text + "\n\n"


def completion_text(tokenizer, subject: str, to: Sequence[str], body: str,
                    shots: Sequence[Shot] = ()) -> str:
    """What follows the prompt in a training example: the body and the end-of-turn marker."""
    prompt = prompt_text(tokenizer, subject, to, shots)
    if tokenizer.chat_template:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction(subject, to, shots)},
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
    shots: int = 0           # how many shots its prompt kept
    #: ORPO: the same prompt followed by the body it is preferred over (the bare base's)
    rejected_ids: list[int] | None = None

    @property
    def body_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode(tokenizer, subject: str, to: Sequence[str], body: str, max_tokens: int,
           shots: Sequence[Shot] = (), shot_room: int | None = None) -> Example:
    """Token ids of prompt + completion. The body gets the room it has without shots: the first
    ``max_tokens`` minus the plain prompt's tokens (the body end is cut), so a prompt with
    ``shots`` (as ``prompt_text`` takes them, already cut) reads exactly the body tokens the
    same prompt without them reads. The shots' own tokens come on top, at most ``shot_room``
    (the last shots are dropped until they fit; None: no bound)."""
    p = tokenizer(prompt_text(tokenizer, subject, to), add_special_tokens=False)["input_ids"]
    if len(p) >= max_tokens - 8:  # a pathological subject: keep its tail, leave room for a body
        p, shots = p[-(max_tokens // 2):], ()
    room = max_tokens - len(p)
    while shots:
        ps = tokenizer(prompt_text(tokenizer, subject, to, shots),
                       add_special_tokens=False)["input_ids"]
        if shot_room is None or len(ps) - len(p) <= shot_room:
            cs = tokenizer(completion_text(tokenizer, subject, to, body, shots),
                           add_special_tokens=False)["input_ids"]
            return Example(ps + cs[:room], len(ps), len(shots))
        shots = shots[:-1]
    c = tokenizer(completion_text(tokenizer, subject, to, body), add_special_tokens=False)["input_ids"]
    return Example(p + c[:room], len(p))
