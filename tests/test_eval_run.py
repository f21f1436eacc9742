"""`idiolect eval` on the tiny model: protocol, calibration beside the scores, stored metrics."""

from __future__ import annotations

import json

import pytest

from conftest import synthetic_messages, write_jsonl

RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96, "batch_tokens": 384}


@pytest.fixture
def cohort(tmp_path, tiny_base, cli_run):
    for user, style in (("ada", "plain"), ("bo", "shout")):
        src = write_jsonl(tmp_path / f"{user}.jsonl", synthetic_messages(user, 30, style=style))
        assert cli_run("user", "import", user, src).exit_code == 0
        assert cli_run("user", "freeze-eval", user, "--size", "6").exit_code == 0
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "r.json", "--candidate",
                "--json")
    assert r.exit_code == 0, r.stderr
    adapter_id = json.loads(r.stdout)["id"]
    # the tiny model writes noise: the gate refuses it, and --force promotes it anyway
    refused = cli_run("adapter", "promote", adapter_id, "--json")
    assert refused.exit_code == 4 and json.loads(refused.stdout)["status"] == "rejected"
    forced = cli_run("adapter", "promote", adapter_id, "--force", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["forced"] is True, forced.stderr
    return adapter_id


def test_eval_reports_scores_with_ceiling_floor_and_base(cohort, monkeypatch):
    from idiolect import adapters
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.generate import GenerationConfig
    from conftest import open_home

    home = open_home()

    conn = home.conn
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=16, batch_size=4, seed=3))
    r = evaluate(home, "ada", base="tiny", cfg=cfg)
    assert r["adapter"] == cohort and r["n"] == 6 and r["cohort"] == ["ada", "bo"]
    assert r["chance"] == pytest.approx(0.5)
    for key in ("fingerprint_distance", "authorship_probability"):
        c = r["calibration"][key]
        assert c["ceiling"] is not None and c["floor"] is not None
    # the styles are far apart: own real text sits above the other user's, both metrics
    assert r["calibration"]["authorship_probability"]["ceiling"] > 0.8
    assert (r["calibration"]["fingerprint_distance"]["ceiling"]
            < r["calibration"]["fingerprint_distance"]["floor"])
    assert r["adapter_scores"]["perplexity"] > 1 and r["base_scores"]["perplexity"] > 1
    assert len(r["samples"]) == 3 and {"real", "adapter", "base"} <= set(r["samples"][0])
    stored = json.loads(adapters.get(conn, cohort)["metrics"])["eval"]
    assert stored["adapter_scores"] == r["adapter_scores"]
    # same seed and settings: the same generations (deterministic protocol)
    again = evaluate(home, "ada", base="tiny", cfg=cfg)
    assert again["samples"] == r["samples"]


def test_eval_reads_sense_with_a_reader_and_keeps_the_protocol(cohort, cli_run):
    """--reader: subject fit and overlap of the adapter's, the bare base's and the real bodies,
    beside the style scores; the protocol (and so the gate's comparisons) is unchanged."""
    from conftest import open_home
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.generate import GenerationConfig

    home = open_home()
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=12, batch_size=4, seed=3),
                     limit=4)
    plain = evaluate(home, "ada", base="tiny", cfg=cfg)
    read = evaluate(home, "ada", base="tiny", cfg=EvalConfig(**{**cfg.__dict__, "reader": "tiny"}))
    assert "sense" not in plain and read["protocol"] == plain["protocol"]
    sn = read["sense"]
    assert sn["reader"] == "tiny" and sn["tokens"] > 0
    for name in ("adapter", "base", "real"):
        lo, hi = sn[name]["interval"]["ci"]
        assert lo <= sn[name]["subject_fit"] <= hi and sn[name]["subject_overlap"] is not None
    assert read["adapter_scores"] == plain["adapter_scores"]
    r = cli_run("eval", "ada", "--base", "tiny", "--limit", "3", "--reader", "tiny")
    assert r.exit_code == 0 and "subject fit (high)" in r.stdout and "read by tiny" in r.stdout
    assert "subject overlap" in r.stdout
    bad = cli_run("eval", "ada", "--base", "tiny", "--limit", "3", "--reader", "nope")
    assert bad.exit_code != 0 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_refuses_a_cohort_of_one_and_stores_nothing(tmp_path, tiny_base, cli_run):
    src = write_jsonl(tmp_path / "solo.jsonl", synthetic_messages("solo", 20))
    cli_run("user", "import", "solo", src)
    cli_run("user", "freeze-eval", "solo", "--size", "4")
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    c = cli_run("compile", "solo", "--base", "tiny", "--recipe", tmp_path / "r.json", "--json")
    assert c.exit_code == 0 and json.loads(c.stdout)["state"] == "candidate"  # gate cannot run
    r = cli_run("eval", "solo", "--adapter", json.loads(c.stdout)["id"])
    assert r.exit_code != 0 and "cohort of at least 2 users" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_eval_without_frozen_eval_set(tmp_path, cli_run):
    src = write_jsonl(tmp_path / "n.jsonl", synthetic_messages("nf", 10))
    cli_run("user", "import", "nf", src)
    r = cli_run("eval", "nf")
    assert r.exit_code != 0 and "no frozen eval set" in r.stderr


def test_eval_text_shows_a_sense_score_that_could_not_be_read():
    """Subjects without a topic word give no subject overlap (None): shown as '-', no crash."""
    from idiolect.commands.eval import eval_text

    score = {"fingerprint_distance": 0.8, "authorship_probability": 0.4, "perplexity": 12.0}
    sense = {k: {"subject_fit": 0.5, "subject_overlap": None} for k in ("adapter", "base", "real")}
    r = {"user": "ada", "adapter": "A1", "base": "tiny", "n": 3, "cohort": ["ada", "bo"],
         "chance": 0.5, "adapter_scores": score, "base_scores": score,
         "calibration": {m: {"ceiling": 0.5, "floor": 0.9} for m in score},
         "sense": {**sense, "reader": "tiny"},
         "novelty": {"copied_ngram_share": 0.0, "n": 8, "max_span": 3, "flagged": 0,
                     "verbatim": 0}}
    text = eval_text(r)
    overlap = next(line for line in text.splitlines() if line.startswith("subject overlap"))
    assert overlap.split()[2:5] == ["-", "-", "-"] and "0.500" in text


def test_perplexity_is_the_same_in_length_sorted_batches(tiny_model_dir, monkeypatch):
    """Batches of similar length (less padding) give the perplexity of one message at a time,
    whatever the messages' order, each message with its own shots: padding never reaches a
    scored token, and a shot stays with its message."""
    import math
    import random

    from transformers import AutoTokenizer, LlamaForCausalLM

    from idiolect.compile import train
    from idiolect.compile.prompts import encode
    from idiolect.evaluate.run import perplexity
    from idiolect.vault.message import Message

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = synthetic_messages("ada", 12)
    msgs = [Message(subject=m["subject"], body=m["body"] * (1 + i % 4), to=m["to"])
            for i, m in enumerate(rows)]
    shots = [[(rows[(i + 5) % 12]["subject"], rows[(i + 5) % 12]["body"][:40 * (i % 3)])]
             if i % 3 else [] for i in range(12)]
    # one at a time, summed by hand: the value a batch must give
    counts = [encode(tok, m.subject, m.to, m.body, 96, shots=sh).body_tokens
              for m, sh in zip(msgs, shots)]
    nll = [math.log(perplexity(model, tok, [m], 96, [sh], batch=1))
           for m, sh in zip(msgs, shots)]
    expected = math.exp(sum(x * c for x, c in zip(nll, counts)) / sum(counts))
    widths = []
    collate = train.collate
    monkeypatch.setattr(train, "collate", lambda ex, pad: widths.append(
        [len(e.input_ids) for e in ex]) or collate(ex, pad))
    assert perplexity(model, tok, msgs, 96, shots) == pytest.approx(expected, rel=1e-5)
    flat = [n for w in widths for n in w]
    assert flat == sorted(flat)  # the batches go shortest first
    order = list(range(12))
    random.Random(1).shuffle(order)
    assert perplexity(model, tok, [msgs[i] for i in order], 96, [shots[i] for i in order],
                      batch=3) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="batch"):
        perplexity(model, tok, msgs, 96, batch=0)
