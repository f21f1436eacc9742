"""The catalog's wire protocol, shared by the publisher, the server and the device.

- the files of a published adapter (``ALLOWED``) and the provenance file a pull writes beside them;
- the adapter id (a ULID, ``ID_RE``), the catalog URL and token environment variables;
- JSON as read off the wire: nested at most ``MAX_JSON_DEPTH`` deep (``loads``), checked by a scan
  of the bytes before parsing, so that a deep body is a clean refusal, never a RecursionError;
- the card settings (``CARD_SETTINGS``): how many texts a card is computed from and how the base
  (and the adapter) write for it. A card compares two sets of texts to the bare base's generations
  on the same prompts, so the publisher's and the device's cards are comparable only when both
  sides use the same settings; every default in idiolect comes from here.

Light on purpose: the server imports it (no torch, no home, no HTTP client).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST

CARD_FILE = "card.json"
ALLOWED = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, MANIFEST, CARD_FILE)  # exactly these, nothing else
PROVENANCE = "catalog.json"   # written beside a pulled adapter's files: where, when, every sha256
ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

URL_ENV = "IDIOLECT_CATALOG_URL"
TOKEN_ENV = "IDIOLECT_CATALOG_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8765"

MAX_JSON_DEPTH = 64


def default_url(url: str | None = None) -> str:
    """``url``, else IDIOLECT_CATALOG_URL, else the default; no trailing slash."""
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def default_token(token: str | None = None) -> str | None:
    """``token``, else IDIOLECT_CATALOG_TOKEN, else None."""
    return token or os.environ.get(TOKEN_ENV) or None


# ----------------------------------------------------------------------------- JSON on the wire
class TooDeep(ValueError):
    """JSON nested deeper than the protocol allows."""


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SAME_BRACKETS = bytes.maketrans(b"{}", b"[]")


def json_depth(data: bytes | str, limit: int | None = None) -> int:
    """How deep arrays and objects nest in ``data`` (outside strings); without parsing it.

    Stops counting once ``limit`` is passed (returns a value above it). Strings are removed
    first (C speed), then only the brackets are walked: a megabyte of base64 costs nothing."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    brackets = _STRING.sub(b"", raw).translate(_SAME_BRACKETS, _NOT_BRACKETS)
    if brackets.count(b"[") <= (limit if limit is not None else -1):
        return brackets.count(b"[")  # an upper bound, within the limit: no walk needed
    depth = deepest = 0
    for b in brackets:
        depth += 1 if b == 0x5B else -1
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                break
    return deepest


def loads(data: bytes | str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of wire data, refused (``TooDeep``, a ValueError) when it nests deeper than
    ``max_depth``. Other errors are json's own ValueError / UnicodeDecodeError."""
    if json_depth(data, max_depth) > max_depth:
        raise TooDeep(f"{where}: JSON nested deeper than {max_depth} levels")
    return json.loads(data)


# ----------------------------------------------------------------------------- card settings
@dataclass(frozen=True)
class CardSettings:
    """How a card's texts are made, the same on the publisher's side and on the device."""

    texts: int = field(default=32, metadata={
        "help": "messages (prompts) a card is computed from"})
    tokens: int = field(default=96, metadata={
        "help": "new tokens the base (and the adapter) write per prompt for a card"})
    batch_size: int = field(default=8, metadata={"help": "prompts generated together"})
    seed: int = field(default=1234, metadata={"help": "generation seed"})
    embedder: str = field(default="auto", metadata={
        "help": "card embedding: auto, minilm or hash"})

    def generation(self, tokens: int | None = None):
        """The ``GenerationConfig`` of card texts (``tokens`` overrides the length)."""
        from ..generate import GenerationConfig

        return GenerationConfig(max_new_tokens=tokens or self.tokens,
                                batch_size=self.batch_size, seed=self.seed)


CARD_SETTINGS = CardSettings()
