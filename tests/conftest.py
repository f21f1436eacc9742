"""Shared fixtures: an isolated home per test, a tiny real-architecture model, synthetic users."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WORDS = ("the a of to in and is it for on with this that we fix add use make patch test "
         "commit file code bug read write when not but so be as at by from our you can "
         "should would could memory leak cache index config path refs object tree blob").split()


def synthetic_messages(user: str, n: int, seed: int = 0, style: str = "plain") -> list[dict]:
    """Messages in a recognisable style: 'plain' lowercase prose, 'shout' short Capitalized lines!"""
    rng = random.Random(f"{user}:{seed}")
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 40))]
        if style == "shout":
            body = "\n".join(" ".join(w.capitalize() for w in words[j:j + 5]) + "!"
                             for j in range(0, len(words), 5))
        else:
            body = " ".join(words) + "; " + " ".join(rng.choice(WORDS) for _ in range(8)) + "."
        out.append({"id": f"{user}-{i}", "user": user, "date": f"2024-01-{i % 28 + 1:02d}T10:00:00Z",
                    "subject": f"{rng.choice(WORDS)}: {' '.join(rng.sample(WORDS, 4))}",
                    "to": ["list@example.org"], "body": body})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextlib.contextmanager
def home_at(path: Path):
    """IDIOLECT_HOME set to ``path`` inside the block, restored after (for module-scoped fixtures
    and helpers, where monkeypatch cannot go)."""
    old = os.environ.get("IDIOLECT_HOME")
    os.environ["IDIOLECT_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        if old is None:
            os.environ.pop("IDIOLECT_HOME", None)
        else:
            os.environ["IDIOLECT_HOME"] = old


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Each test's own state directory; IDIOLECT_HOME names it for the CLI (the edge that reads
    it), library calls get a ``Home`` from ``open_home()`` or the ``home`` fixture."""
    home = tmp_path / "home"
    monkeypatch.setenv("IDIOLECT_HOME", str(home))
    return home


def open_home():
    """A new ``Home`` on the current test's state directory (IDIOLECT_HOME, as the CLI does)."""
    from idiolect.home import Home

    return Home.open(os.environ["IDIOLECT_HOME"])


@pytest.fixture
def home(isolated_home):
    """The test's ``Home``, open for the whole test."""
    from idiolect.home import Home

    h = Home.open(isolated_home)
    yield h
    h.close()


def force_promote(home, adapter_id: str) -> None:
    """Make a test fixture's adapter active without evaluating it (recorded as forced)."""
    from idiolect.pipeline import promote

    promote(home, adapter_id, force=True, evaluate=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-weight Llama with a byte-level BPE tokenizer trained here (no download)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def make_tiny_model(folder: Path) -> Path:
    """``tiny_model_dir``'s model written into ``folder`` (also bench/serve_load.py --base tiny)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [m["subject"] + "\n" + m["body"] for s in ("plain", "shout")
              for m in synthetic_messages("t", 200, style=s)]
    corpus += ["Write the body of this message in my own voice.\nTo: list@example.org\nSubject: x"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_base(tiny_model_dir) -> str:
    """The tiny model registered as base 'tiny' in this test's home."""
    from idiolect.bases.load import add_local

    with open_home() as h:
        add_local(h, "tiny", tiny_model_dir)
    return "tiny"


@pytest.fixture
def cli_run():
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from idiolect.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run
