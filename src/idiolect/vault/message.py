"""The unit of the vault: one authored text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field


@dataclass
class Message:
    """One message a user wrote: subject + body, with where it came from.

    ``source_id`` is the identity in the source (Message-ID, commit sha, JSONL id, file name);
    ``source`` names the file or repository it was read from. ``date`` is ISO 8601 (UTC where
    the source gives a zone) or ``None``. ``source_user`` is who the source itself says wrote
    it (a JSONL "user" field), ``None`` where it says nothing; it is not stored.
    """

    subject: str
    body: str
    date: str | None = None
    to: list[str] = field(default_factory=list)
    source: str = ""
    source_id: str | None = None
    source_user: str | None = None

    @property
    def digest(self) -> str:
        """Content digest used for deduplication: normalized subject + body."""
        return content_digest(self.subject, self.body)


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC, lowercased, whitespace collapsed: two copies that differ only in layout match."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip().lower()


def content_digest(subject: str, body: str) -> str:
    norm = normalize_text(subject) + "\n\x00\n" + normalize_text(body)
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()
