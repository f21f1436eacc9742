"""Cleaning: keep only what the author wrote (no quoted replies, signatures, trailers, patches)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# A quoted line, also "> >"; an indented ">" is code (shell redirection, conflict markers).
_QUOTE = re.compile(r"^>")
# The line that introduces a quote: "On Mon, 3 Jan 2022, Bob <b@x> wrote:", "Bob <b@x> writes:",
# Gmail's "2016-04-14 11:06 GMT+02:00 Bob <b at x.com>:" (an address, then the colon).
_ATTRIB_END = re.compile(
    r"(?:wrote|writes|said|schrieb|[ée]crit)\s?:$|<[^<>\s]+(?:@|\sat\s)[^<>]*>\s?:$",
    re.IGNORECASE,
)
_ATTRIB_START = re.compile(r"^(?:On|Am|Le|El|Il|Op|Em|\d{4}-\d\d-\d\d)\s", re.IGNORECASE)
# Everything from these lines on is someone else's message (also Enron's "--- Forwarded by X").
_FORWARD = re.compile(
    r"^(?:-{2,}\s*(?:Original Message\s*-{2,}|Forwarded message\s*-{2,}|Forwarded by\b.*)"
    r"|Begin forwarded message:)$",
    re.IGNORECASE,
)
# A mailing-list archive's (pipermail) footer: the parts it stripped, and what follows.
_ARCHIVE_FOOTER = re.compile(
    r"^(?:-{3,} ?next part ?-{3,}|An HTML attachment was scrubbed\.\.\."
    r"|A non-text attachment was scrubbed\.\.\.)$",
    re.IGNORECASE,
)
# Mailman's list footer: a rule of underscores, then "<List> mailing list".
_LIST_RULE = re.compile(r"^_{10,}$")
_LIST_NAME = re.compile(r"^\S.* mailing list$", re.IGNORECASE)
# Outlook's quoted header block: "From: Bob" then "Sent: Monday, ..." ("Date:" is too common).
_OUTLOOK_FROM = re.compile(r"^\*?From:\*? \S")
_OUTLOOK_SENT = re.compile(r"^\*?Sent:\*? \S")
# After a format-patch "---" line: the diffstat and the patch itself.
_PATCHY = re.compile(
    r"^(?:diff --git |Index: |\+\+\+ |@@ | \d+ files? changed| \S.*\|\s+(?:\d+|Bin))"
)
_DASHES = re.compile(r"^-{3,}$")  # "---" or a longer rule before a diffstat
# Trailers: "Token: value" lines; at least one in a block must be a known token or "*-by".
_TRAILER = re.compile(r"^[A-Z][A-Za-z0-9-]*: \S")
_KNOWN_TRAILER = re.compile(
    r"^(?:[A-Za-z0-9-]+-by|signed-off-by|reviewed-by|acked-by|helped-by|reported-by|tested-by"
    r"|co-authored-by|suggested-by|cc|change-id|mentored-by|thanks-to|link|fixes|closes"
    r"|based-on-patch-by|bug): \S",
    re.IGNORECASE,
)
_CHERRY = re.compile(r"^\(cherry picked from commit [0-9a-f]+\)$")
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|fw|aw|wg|sv|vs|antw|tr)\s*(?:\[\d+\]|\(\d+\))?\s*:"
    r"|\[[^\]]*\b(?:PATCH|RFC|RESEND|PULL|WIP)\b[^\]]*\])\s*",
    re.IGNORECASE,
)
_WS = re.compile(r"\s+")
_RULE = re.compile(r"^[_=*~-]{3,}$")  # a separator line left dangling at the end

_CUT = None  # marks where a removed block was (becomes one blank line)


def clean_body(text: str) -> str:
    """The author's own words of a message body; idempotent."""
    prev, cur = None, text
    # Each pass only shortens the text (after the first), so this ends; looping to a fixed
    # point makes the result idempotent (e.g. trailer blocks exposed by a removal).
    while cur != prev:
        prev, cur = cur, _clean_pass(cur)
    return cur


def clean_subject(s: str) -> str:
    """Subject without Re:/Fwd:/[PATCH v2 3/7]-style prefixes, whitespace collapsed."""
    s = _WS.sub(" ", s).strip()
    while True:
        m = _REPLY_PREFIX.match(s)
        if not m or m.end() == 0:
            return s
        s = s[m.end() :].strip()


def _clean_pass(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    # ">From " with no space is an mbox escape of "From ", not a quote.
    lines = [ln[1:] if ln.startswith(">From ") else ln for ln in lines]
    lines = _cut_from(lines, lambda ln: bool(_FORWARD.match(ln) or _ARCHIVE_FOOTER.match(ln)))
    lines = _cut_pair(lines, _OUTLOOK_FROM, _OUTLOOK_SENT)
    lines = _cut_pair(lines, _LIST_RULE, _LIST_NAME)
    lines = _cut_from(lines, lambda ln: ln == "--")
    lines = _cut_patch(lines)
    lines = _drop_quotes(lines)
    lines = _drop_trailers(lines)
    return "\n".join(_tidy(lines))


def _cut_from(lines: list[str], pred) -> list[str]:
    for i, ln in enumerate(lines):
        if pred(ln):
            return lines[:i]
    return lines


def _cut_pair(lines: list[str], first: re.Pattern, second: re.Pattern) -> list[str]:
    """Cut from the first line matching ``first`` that is followed by one matching ``second``."""
    for i in range(len(lines) - 1):
        if first.match(lines[i]) and second.match(lines[i + 1]):
            return lines[:i]
    return lines


def _cut_patch(lines: list[str]) -> list[str]:
    """git format-patch: the message ends at a '---' (or longer) line followed by a diffstat
    or diff."""
    cut, patch_after = None, False
    for i in range(len(lines) - 1, -1, -1):
        if _DASHES.match(lines[i]) and patch_after:
            cut = i
        patch_after = patch_after or bool(_PATCHY.match(lines[i]))
    return lines if cut is None else lines[:cut]


def _drop_quotes(lines: list[str]) -> list[str | None]:
    drop = [bool(_QUOTE.match(ln)) for ln in lines]
    for i in range(len(lines)):
        if not drop[i] or (i > 0 and drop[i - 1]):
            continue
        j = i - 1  # start of a quoted block: look back over blank lines for an attribution
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j < 0 or drop[j] or not _ATTRIB_END.search(lines[j]):
            continue
        drop[j] = True
        if (
            j > 0
            and lines[j - 1].strip()
            and not drop[j - 1]
            and not _ATTRIB_START.match(lines[j])
            and _ATTRIB_START.match(lines[j - 1])
        ):
            drop[j - 1] = True  # the attribution wrapped over two lines
    out: list[str | None] = []
    for ln, d in zip(lines, drop):
        if not d:
            out.append(ln)
        elif not out or out[-1] is not _CUT:
            out.append(_CUT)
    return out


def _is_trailer_block(par: list[str]) -> bool:
    strong = False
    for k, ln in enumerate(par):
        if _KNOWN_TRAILER.match(ln):
            strong = True
        elif _TRAILER.match(ln) or _CHERRY.match(ln) or ln.startswith("[") or ln.endswith("]"):
            pass
        elif k > 0 and ln[:1] in (" ", "\t"):
            pass  # continuation of the line above
        else:
            return False
    return strong


def _drop_trailers(lines: list[str | None]) -> list[str | None]:
    lines = list(lines)
    while True:
        while lines and (lines[-1] is _CUT or not lines[-1].strip()):
            lines.pop()
        start = len(lines)
        while start > 0 and lines[start - 1] is not _CUT and lines[start - 1].strip():
            start -= 1
        par = lines[start:]
        if par and _is_trailer_block(par):
            del lines[start:]
            continue
        # Trailers stuck to the last paragraph with no blank line: drop the known ones.
        end = len(lines)
        while end > start + 1 and _KNOWN_TRAILER.match(lines[end - 1]):
            end -= 1
        if end == len(lines):
            return lines
        del lines[end:]


def _tidy(lines: list[str | None]) -> list[str]:
    """A removed block becomes one blank line; 3+ blank lines become 2; trim blank/rule edges."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i] is _CUT:
            while out and not out[-1].strip():
                out.pop()
            i += 1
            while i < len(lines) and (lines[i] is _CUT or not lines[i].strip()):
                i += 1
            out.append("")
            continue
        out.append(lines[i])
        i += 1
    tidy: list[str] = []
    blanks = 0
    for ln in out:
        blanks = blanks + 1 if not ln.strip() else 0
        if blanks <= 2:
            tidy.append("" if blanks else ln)
    start = 0
    while start < len(tidy) and not tidy[start]:
        start += 1
    while len(tidy) > start and (not tidy[-1] or _RULE.match(tidy[-1])):
        tidy.pop()
    return tidy[start:]


class _HTMLText(HTMLParser):
    """Visible text of an HTML body; a <blockquote> becomes one '>' line (a quote to drop)."""

    _BLOCK = {"p", "div", "br", "li", "tr", "pre", "table", "ul", "ol", "hr",
              "h1", "h2", "h3", "h4", "h5", "h6"}
    _SKIP = {"script", "style", "head", "title", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            if tag == "blockquote" and not self.skip:
                self.out.append("\n>\n")
            self.skip += 1
        elif tag in self._BLOCK:
            self.out.append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self._BLOCK and tag != "br":
            self.out.append("\n\n" if tag == "p" else "\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Visible text of an HTML mail body, paragraphs kept; quoted blocks become a '>' line."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = [ln.strip() for ln in "".join(parser.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
