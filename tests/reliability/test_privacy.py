"""Privacy: (a) a memorizing adapter is caught by the novelty check of the upgrade gate and is
not promoted; (b) no personal text (marker strings planted in subjects and bodies) leaks into
stdout/stderr or files under the home, except where text is the point.

What may hold the user's text, and why (everything else under the home must not):
- ``idiolect.db`` (+ ``-wal``/``-shm``): the vault itself;
- ``reports/eval-<adapter>.json``: the saved evaluation shows a few held-out messages beside the
  adapter's generations, for the user to read (``idiolect report`` renders them);
- ``cache/authorship-*.pkl``: the cohort's authorship classifier, a local cache rebuilt from the
  vault; its TF-IDF vocabulary holds words (and word pairs) that occur in >= 2 messages. Never
  sent anywhere (the catalog gets safetensors + JSON only);
- the draft's stdout (the text the user asked for) and ``eval --json``'s ``samples`` (held-out
  texts beside generations: the evaluation the user asked for); the plain-text ``eval`` output
  holds scores only and is audited.
Model weights (``adapter_model.safetensors``, checkpoints) are scanned too: they must not hold
the text as bytes (memorization inside weights is what (a) measures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import relhelp as rh
from conftest import synthetic_messages, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


# ------------------------------------------------------------------------------ (a) novelty
def _sharp_base(folder: Path, like: Path, seed: int) -> Path:
    """conftest's tiny Llama with larger initial weights (std 0.2, not 0.02): the stock one's
    tied 64-wide embeddings cap every logit near +-1.3, so no LoRA can make it sure of a next
    token, let alone recite a message. This one can memorize."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(like)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sharp_dirs(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    return tuple(_sharp_base(tmp_path_factory.mktemp(f"sharp{s}"), tiny_model_dir, s)
                 for s in (0, 1))


# Over-training: 2 messages, 60 epochs at lr 1e-2, one example per step (120 steps).
OVERFIT = {"rank": 8, "alpha": 16, "lr": 0.01, "epochs": 60, "max_tokens": 128,
           "batch_tokens": 128, "warmup_steps": 0, "threads": 1, "checkpoint_every": 1000}


@pytest.mark.slow
def test_upgrade_gate_refuses_a_memorizing_candidate(isolated_home, tmp_path, sharp_dirs,
                                                    cli_run):
    """cam's weekly status mails share one prompt (same subject, same recipient), so an
    over-trained adapter answers every eval prompt with a training message, word for word.
    The upgrade replays that recipe on the new base; the candidate scores fine on the style
    metrics (the bar is set so any candidate passes them) but the novelty check refuses it."""
    from idiolect import adapters
    from idiolect.bases.load import add_local
    from conftest import open_home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    rows = [r | {"subject": "weekly status", "to": ["team@example.org"]}
            for r in synthetic_messages("cam", 10)]
    with open_home() as home:
        conn = home.conn
        add_local(home, "sharp", sharp_dirs[0])
        add_local(home, "sharp2", sharp_dirs[1])
        for user, msgs, size in (("cam", rows, 4), ("bob", synthetic_messages("bob", 40,
                                                                             style="shout"), 8)):
            src = write_jsonl(tmp_path / f"{user}.jsonl", msgs)
            store.import_messages(conn, user, read_source(src), source=str(src), fmt="jsonl")
            store.freeze_eval(conn, user, size=size)
    recipe = tmp_path / "overfit.json"
    recipe.write_text(json.dumps(OVERFIT))
    r = cli_run("compile", "cam", "--base", "sharp", "--examples", "2", "--recipe", recipe,
                "--eval-limit", "4", "--json")
    # the gate already refuses it on its first compile: it copies its training messages
    assert r.exit_code == 4 and "copy a training message verbatim" in r.stderr, r.stderr
    old = json.loads(r.stdout)
    assert old["metrics"]["train_loss_last"] < 0.5  # it did learn its 2 messages by heart
    from conftest import force_promote

    with open_home() as home:
        force_promote(home, old["id"])  # made active anyway, to be upgraded
        adapters.update_metrics(home.conn, old["id"], rh.bar_scores(home.conn, "cam", 0.0, 1e9,
                                                                  max_new_tokens=64))

    r = cli_run("upgrade", "--to", "sharp2", "--users", "cam", "--workers", "1", "--limit", "4",
                "--max-new-tokens", "64", "--no-compare-old", "--authorship-tol", "0",
                "--distance-tol", "0", "--json")
    assert r.exit_code == 4, r.stderr  # GateRefused
    (cam,) = json.loads(r.stdout)["users"]
    assert cam["status"] == "rejected", cam
    assert cam["examples"] == 2 and cam["recipe"]["epochs"] == 60  # the recipe was replayed
    nov = cam["novelty"]
    assert nov["verbatim"] >= 1 and nov["max_span"] >= 20, nov
    reasons = cam["gate"]["reasons"]
    assert reasons and all(x.startswith("novelty: ") for x in reasons), reasons  # only novelty
    assert "copy a training message verbatim (allowed 0)" in reasons[0]
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: the gate refused 1 of 1 users (cam); cam: novelty: ")
    pairs = rh.active_pairs(Path(isolated_home))
    assert pairs == {("cam", "sharp"): [old["id"]]}  # the old one stays; nothing on sharp2
    assert [tuple(x) for x in rh.db_rows(isolated_home, "SELECT id, state FROM adapters WHERE"
                                         " base='sharp2'")] == [(cam["candidate"], "rejected")]


# ------------------------------------------------------------------------------ (b) logs
SHARED = "zephyrquartz"  # in every body of ada's: a word of hers that occurs many times


def _marked(n: int = 40) -> tuple[list[dict], list[str]]:
    rows, markers = [], [SHARED]
    for i, r in enumerate(synthetic_messages("ada", n)):
        body_m, subj_m = f"qzv{i:03d}kxb", f"sbj{i:03d}wqy"
        markers += [body_m, subj_m]
        rows.append(r | {"subject": f"{r['subject']} {subj_m}",
                         "body": f"{r['body']} {body_m} and {SHARED} again."})
    return rows, markers


# the vault, eval reports, and the cached authorship classifiers (their n-gram vocabularies hold
# words of the texts): the evaluation's, and draft's ranker (fitted on the training pools)
ALLOWED = (re.compile(r"idiolect\.db(-wal|-shm)?"), re.compile(r"reports/eval-[0-9A-Z]{26}\.json"),
           re.compile(r"cache/(authorship|draft-ranker)-[0-9a-f]+\.pkl"))


def _scan_home(home: Path, markers: list[str]) -> tuple[dict[str, list[str]], set[str]]:
    """(marker hits by file outside the allowed ones, allowed files that hold a marker)."""
    leaks: dict[str, list[str]] = {}
    allowed_hits: set[str] = set()
    needles = [m.encode() for m in markers]
    for p in sorted(home.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(home).as_posix()
        data = p.read_bytes()
        hits = [n.decode() for n in needles if n in data]
        if not hits:
            continue
        if any(a.fullmatch(rel) for a in ALLOWED):
            allowed_hits.add(rel)
        else:
            leaks[rel] = hits[:5]
    return leaks, allowed_hits


def _audit_flow(run, home: Path, tmp: Path) -> list[tuple[str, str, str]]:
    """import (with a bad line first), freeze, compile, eval, draft, show: (name, out, err)."""
    rows, _ = _marked()
    bad = tmp / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:-5] + " qzvBADkxb\n")
    src = write_jsonl(tmp / "ada.jsonl", rows)
    bob = write_jsonl(tmp / "bob.jsonl", synthetic_messages("bob", 40, style="shout"))
    recipe = rh.write_recipe(tmp / "recipe.json", epochs=1)
    steps = [("import-bad", ("user", "import", "ada", bad), 2),
             ("import", ("user", "import", "ada", src), 0),
             ("import-bob", ("user", "import", "bob", bob), 0),
             ("freeze", ("user", "freeze-eval", "ada", "--size", "8"), 0),
             ("freeze-bob", ("user", "freeze-eval", "bob", "--size", "8"), 0),
             # the gate refuses the tiny model's noise (exit 4): forced, to go on
             ("compile", ("compile", "ada", "--base", "tiny", "--recipe", recipe,
                          "--eval-limit", "4"), 4),
             ("promote", ("adapter", "promote", "LAST", "--force", "--limit", "4"), 0),
             ("eval", ("eval", "ada", "--base", "tiny", "--limit", "4"), 0),
             ("draft", ("draft", "ada", "--base", "tiny", "--subject", "release plan",
                        "--max-new-tokens", "16"), 0),
             ("show", ("user", "show", "ada"), 0),
             ("adapters", ("adapter", "list"), 0)]
    out = []
    for name, args, code in steps:
        if "LAST" in args:  # the adapter the compile just made
            last = rh.db_rows(home, "SELECT id FROM adapters ORDER BY created_at DESC, id DESC")
            args = tuple(last[0][0] if a == "LAST" else a for a in args)
        got_code, stdout, stderr = run(*args)
        assert got_code == code, (name, stderr[-2000:])
        out.append((name, stdout, stderr))
    return out


def _check_audit(home: Path, outputs) -> None:
    _, markers = _marked()
    markers.append("qzvBADkxb")
    for name, stdout, stderr in outputs:
        for stream, text in (("stderr", stderr), ("stdout", stdout)):
            if name == "draft" and stream == "stdout":
                continue  # the draft itself: what the user asked for
            found = [m for m in markers if m in text]
            assert not found, f"{name} {stream} shows personal text {found[:3]}:\n{text[-800:]}"
    leaks, allowed_hits = _scan_home(home, markers)
    assert not leaks, f"personal text outside the vault, eval reports and scorer caches: {leaks}"
    # the scan does see text where it is: the vault and the saved evaluation hold markers
    assert "idiolect.db" in allowed_hits or "idiolect.db-wal" in allowed_hits
    assert any(h.startswith("reports/eval-") for h in allowed_hits), allowed_hits


def test_no_personal_text_in_logs_or_files(isolated_home, tmp_path, tiny_base, cli_run, capfd):
    """In-process through the CLI (click's runner; capfd also catches anything a library
    writes straight to the file descriptors, e.g. transformers' logging)."""
    def run(*args):
        r = cli_run(*args)
        fd = capfd.readouterr()
        return r.exit_code, r.stdout + fd.out, r.stderr + fd.err

    _check_audit(isolated_home, _audit_flow(run, isolated_home, tmp_path))


@pytest.mark.slow
def test_no_personal_text_in_logs_or_files_child_processes(isolated_home, tmp_path,
                                                           tiny_model_dir):
    """The same flow, each command its own `idiolect` process (real stderr, real logging)."""
    home = isolated_home
    rh.setup_home(home, tmp_path, {"tiny": tiny_model_dir}, {})

    def run(*args):
        r = rh.run(home, *args)
        return r.returncode, r.stdout, r.stderr

    _check_audit(home, _audit_flow(run, home, tmp_path))
