"""Novelty: copied spans are found, paraphrases are not."""

from __future__ import annotations

from idiolect.evaluate.novelty import NgramIndex, novelty, tokens

TRAINING = [
    "When the index is rebuilt after a crash we first read the journal from disk and then replay "
    "every entry that was written before the last checkpoint so that nothing is lost at all, and "
    "only afterwards do we open the repository for writes again.",
    "Teach the parser to accept trailing commas in lists.",
]
COPIED_30 = " ".join(tokens(TRAINING[0])[5:35])  # 30 consecutive words of a training message


def test_detects_a_copied_30_word_span():
    generated = [f"Some new opening words here. {COPIED_30.upper()}! And a brand new ending."]
    out = novelty(generated, TRAINING, n=8)
    assert out["longest_span"] == [30]
    assert out["max_span"] == 30
    assert out["flagged"] == 1 and out["flagged_idx"] == [0]
    assert out["verbatim"] == 0
    assert 0.5 < out["copied_ngram_share"] < 1.0


def test_paraphrase_is_not_flagged():
    paraphrase = ("After a crash, when we rebuild the index, the journal is read from disk first; "
                  "each entry written before the latest checkpoint gets replayed, so we lose "
                  "nothing, and the repository only then reopens for writing.")
    out = novelty([paraphrase], TRAINING, n=8)
    assert out["max_span"] == 0
    assert out["flagged"] == 0
    assert out["copied_ngram_share"] == 0.0


def test_verbatim_after_whitespace_normalization():
    gen = ["  Teach the parser   to accept\ntrailing commas in lists. ", "something else entirely"]
    out = novelty(gen, TRAINING, n=8)
    assert out["verbatim"] == 1 and out["verbatim_idx"] == [0]
    assert out["longest_span"] == [9, 0]
    assert out["flagged"] == 0  # 9 words < 20


def test_short_texts_and_reusable_index():
    index = NgramIndex(TRAINING, n=4)
    out = novelty(["too short", ""], index)
    assert out["n"] == 4 and out["ngrams"] == 0 and out["copied_ngram_share"] == 0.0
    assert out["longest_span"] == [0, 0] and out["verbatim"] == 0
