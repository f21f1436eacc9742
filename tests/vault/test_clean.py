"""Cleaning rules: what is the author's own text and what is not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from idiolect.vault.clean import clean_body, clean_subject


def test_reply_drops_quote_attribution_and_signature():
    text = (
        "Hi Bob,\r\n\r\nSounds good.\r\n\r\n"
        "On Mon, 3 Jan 2022 at 10:00, Bob Smith\r\n<b@x.com> wrote:\r\n"
        "> Shall we meet?\r\n> > Earlier words.\r\n\r\n"
        "And one more thing.\r\n\r\n-- \r\nAlice\r\nCEO, Example Corp\r\n"
    )
    assert clean_body(text) == "Hi Bob,\n\nSounds good.\n\nAnd one more thing."


def test_gnus_attribution_and_interleaved_reply():
    text = "Jeff King <peff@peff.net> writes:\n\n> first point\nI agree.\n> second point\nNo."
    assert clean_body(text) == "I agree.\n\nNo."


def test_attribution_kept_when_no_quote_follows():
    text = "Bob said it well.\nAlice wrote:\nnothing quoted here"
    assert clean_body(text) == text


def test_bare_double_dash_signature():
    assert clean_body("Thanks!\n--\nBob\n") == "Thanks!"


def test_forwarded_and_original_message_are_cut():
    assert clean_body("FYI\n\n---------- Forwarded message ---------\nFrom: x\nhi") == "FYI"
    assert clean_body("See below.\n-----Original Message-----\nFrom: Bob\n") == "See below."
    assert clean_body("Look:\n\nBegin forwarded message:\n\nFrom: x") == "Look:"
    enron = "Please review.\n\n---------------------- Forwarded by Ann/HOU/ECT on 10/16/2000"
    assert clean_body(enron + " 01:42 PM ---------------------------\nold text") == "Please review."
    outlook = "Agreed.\n\n________________\nFrom: Bob <b@x>\nSent: Monday, May 1\nTo: Ann\n\nOld."
    assert clean_body(outlook) == "Agreed."


def test_git_trailers_removed():
    text = (
        "Fix the frobnicator.\n\nIt was broken.\n\n"
        "Reported-by: Carol <c@x>\nSigned-off-by: Alice <a@x>\n"
        "[jc: tweaked the log message]\nSigned-off-by: Junio <j@x>\n"
    )
    assert clean_body(text) == "Fix the frobnicator.\n\nIt was broken."


def test_trailers_stuck_to_paragraph_and_stacked_blocks():
    assert clean_body("Fix it.\nSigned-off-by: A <a@x>") == "Fix it."
    assert clean_body("Fix it.\n\nSigned-off-by: A <a@x>\n\nCc: b@x\n") == "Fix it."


def test_colon_lines_without_known_trailer_are_prose():
    text = "Results follow.\n\nNote: this matters\nWarning: so does this"
    assert clean_body(text) == text


def test_format_patch_part_is_cut():
    text = (
        "Make it faster.\n\nBy a lot.\n---\n a.c | 2 +-\n 1 file changed, 1 insertion(+)\n\n"
        "diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-x\n+y\n"
    )
    assert clean_body(text) == "Make it faster.\n\nBy a lot."


def test_triple_dash_in_prose_is_kept():
    text = "Part one.\n---\nPart two."
    assert clean_body(text) == text


def test_whitespace_normalized():
    text = "\n\n  indented first\t \r\rsecond   \n\n\n\n\nthird\n\n"
    assert clean_body(text) == "  indented first\n\nsecond\n\n\nthird"


def test_indented_angle_brackets_are_code_and_escaped_from_is_text():
    text = "Run:\n\n  >expected &&\n    >>>>>>> theirs\n\n>From here on it works."
    want = "Run:\n\n  >expected &&\n    >>>>>>> theirs\n\nFrom here on it works."
    assert clean_body(text) == want


def test_quote_only_message_is_empty():
    assert clean_body("On Tue, Bob wrote:\n> hello\n> > there\n") == ""


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
@settings(max_examples=200, deadline=None)
def test_clean_body_idempotent_and_quote_free(text):
    once = clean_body(text)
    assert clean_body(once) == once
    assert not any(ln.startswith(">") for ln in once.split("\n"))


_PIECES = st.sampled_from(
    ["> q", "> > qq", "On Mon, Bob wrote:", "wrote:", "-- ", "--", "---", " a | 1 +",
     "Signed-off-by: A <a@x>", "Cc: b", "[jc: x]", "  cont", "Text.", "", "\r", "Note: n",
     "-----Original Message-----", "diff --git a b"]
)


@given(st.lists(_PIECES, max_size=25))
@settings(max_examples=200, deadline=None)
def test_clean_body_idempotent_on_mail_like_lines(lines):
    once = clean_body("\n".join(lines))
    assert clean_body(once) == once


def test_clean_subject():
    assert clean_subject("Re: RE: Fwd: [PATCH v2 3/7] foo:  bar") == "foo: bar"
    assert clean_subject("[RFC PATCH] x") == "x"
    assert clean_subject("AW: Re[2]:  hi\tthere ") == "hi there"
    assert clean_subject("Re: [PATCH] Re: y") == "y"
    assert clean_subject("[ANNOUNCE] Git v2.45") == "[ANNOUNCE] Git v2.45"
    assert clean_subject("Regarding: x") == "Regarding: x"
    assert clean_subject("") == ""


# --- mailing-list archives and commit bodies (probe of the released tool) ---------------


def test_pipermail_footer_is_cut():
    text = (
        "I think we should ship it.\n\nCheers,\nAnn\n"
        "-------------- next part --------------\n"
        "An HTML attachment was scrubbed...\n"
        "URL: <http://lists.example.org/pipermail/dev/attachments/20160414/0a1b.html>\n"
    )
    assert clean_body(text) == "I think we should ship it.\n\nCheers,\nAnn"
    scrubbed_only = "Here it is.\n\nA non-text attachment was scrubbed...\nName: x.pdf\nURL: <u>\n"
    assert clean_body(scrubbed_only) == "Here it is."


def test_mailman_list_footer_is_cut():
    text = ("Works for me.\n\n_______________________________________________\n"
            "dev mailing list\ndev@lists.example.org\nhttps://lists.example.org/listinfo/dev\n")
    assert clean_body(text) == "Works for me."


def test_gmail_attribution_line_goes_with_its_quote():
    text = ("Yes, that works for me.\n\n"
            "2016-04-14 11:06 GMT+02:00 Ann Example <ann at example.com>:\n\n"
            "> Can we meet on Friday?\n> Regards\n\nSee you then.")
    assert clean_body(text) == "Yes, that works for me.\n\nSee you then."
    wrapped = ("Agreed.\n\n2016-04-14 11:06 GMT+02:00 Ann Example\n<ann@example.com>:\n"
               "> Friday?\n")
    assert clean_body(wrapped) == "Agreed."
    # an address line with no quote under it is prose
    assert clean_body("Write to Ann <ann@example.com>:\nshe knows.") == (
        "Write to Ann <ann@example.com>:\nshe knows.")


def test_diffstat_after_a_longer_dash_rule_is_cut():
    text = ("Fix the parser.\n\nIt broke on empty input.\n----\n"
            " src/a.c | 4 ++--\n 1 file changed, 2 insertions(+), 2 deletions(-)\n")
    assert clean_body(text) == "Fix the parser.\n\nIt broke on empty input."
    assert clean_body("One.\n-----\nTwo.") == "One.\n-----\nTwo."  # a rule in prose stays
