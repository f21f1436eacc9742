"""Helpers and fixtures of the serve tests (imported by name; no second conftest.py): a live
server on loopback, the tiny base, users with random-weight LoRA
adapters (made active with a recorded force), uvicorn in a thread on a free port; the former
per-row sampler (the batched one's reference, also bench/serve_step.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def random_adapter(home, user: str, base: str, seed: int) -> str:
    """Install a LoRA adapter of ``user`` with random A and B (so it writes unlike the bare
    base), made active without the gate. Returns its id."""
    import torch
    from safetensors.torch import save_file

    from conftest import force_promote
    from idiolect import adapters
    from idiolect.bases import load as bases
    from idiolect.home import new_id, utcnow
    from idiolect.manifest import Manifest

    ref = bases.resolve(home, base)
    fp = bases.read_fingerprint(ref)
    adapter_id = new_id()
    g = torch.Generator().manual_seed(seed)
    with adapters.staging(home, adapter_id) as folder:
        tensors = {}
        for i in range(2):
            for proj in ("q_proj", "v_proj"):
                key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
                out = 64 if proj == "q_proj" else 32
                tensors[f"{key}.lora_A.weight"] = torch.randn(4, 64, generator=g)
                tensors[f"{key}.lora_B.weight"] = torch.randn(out, 4, generator=g)
        save_file(tensors, str(Path(folder) / "adapter_model.safetensors"))
        (Path(folder) / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM", "base_model_name_or_path": f"idiolect/{base}"}))
        m = Manifest(id=adapter_id, user=user, base={"name": ref.name, "fingerprint": fp},
                     snapshot={"digest": "c" * 64, "messages": 1, "examples": 1},
                     recipe={"rank": 4, "alpha": 8}, created_at=utcnow(),
                     files=adapters.file_digests(Path(folder)))
        m.write(Path(folder))
        adapters.install(home, Path(folder), m)
    force_promote(home, adapter_id)
    return adapter_id


def add_user(home, name: str) -> None:
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    import_messages(home.conn, name, [Message("hello", f"a body by {name}")], source="t",
                    fmt="jsonl")


class Live:
    """A running server: its URL, the app (its batcher), an OpenAI client, and stop()."""

    def __init__(self, app, url: str, stop, token: str | None) -> None:
        from openai import OpenAI

        self.app, self.url, self.stop = app, url, stop
        self.client = OpenAI(base_url=url + "/v1", api_key=token or "none", max_retries=0,
                             timeout=60)

    @property
    def stats(self) -> dict:
        return self.app.state.batcher.snapshot()


@pytest.fixture
def serve(home, tiny_base):
    """``serve(**batch_config)``: start a server on this test's home (users added before the
    call have their adapters preloaded; ``base``: another base than the tiny one); every server
    is stopped at the end."""
    from idiolect.catalog.server import serve_in_thread
    from idiolect.serve.app import create_app
    from idiolect.serve.batcher import BatchConfig
    from idiolect.serve.models import ServedModels

    started = []

    def start(token: str | None = None, max_body: int = 1 << 20, base: str | None = None,
              **cfg) -> Live:
        models = ServedModels(home, base or tiny_base)
        models.preload()
        app = create_app(models, BatchConfig(**cfg), token=token, max_body=max_body)
        url, stop = serve_in_thread(app)
        live = Live(app, url, stop, token)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
        live.app.state.batcher.stop()


@pytest.fixture
def two_users(home, tiny_base) -> dict[str, str]:
    """ada and bob, each with an active random adapter: user -> adapter id."""
    out = {}
    for seed, user in enumerate(("ada", "bob")):
        add_user(home, user)
        out[user] = random_adapter(home, user, tiny_base, seed)
    return out


def add_styled_user(home, name: str, style: str = "plain", n: int = 40, eval_size: int = 8):
    """A user with ``n`` synthetic messages in a style (conftest's) and a frozen eval set, so
    ``draft.rank`` has a training pool to fit its scorer on."""
    from conftest import synthetic_messages
    from idiolect.vault.message import Message
    from idiolect.vault.store import freeze_eval, import_messages

    rows = synthetic_messages(name, n, style=style)
    import_messages(home.conn, name, [Message(r["subject"], r["body"], to=r["to"],
                                              date=r["date"], source_id=r["id"]) for r in rows],
                    source="t", fmt="jsonl")
    freeze_eval(home.conn, name, size=eval_size)


def sample_alone(row, logits, eos: set[int], penalty: float) -> int:
    """One row's token as the batcher sampled it before batched sampling (``row``: ``job``
    with ``sampling`` and ``prompt_ids``, ``ids`` so far, ``gen``)."""
    import torch

    s = row.job.sampling
    if penalty != 1.0:
        seen = torch.tensor(sorted(set(row.job.prompt_ids) | set(row.ids)), dtype=torch.long)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    if s.ignore_eos:
        logits[list(eos)] = float("-inf")
    if s.temperature == 0:
        return int(torch.argmax(logits))
    scaled = logits / s.temperature
    if 0 < s.top_k < len(scaled):  # transformers' TopKLogitsWarper, after the temperature
        scaled = scaled.masked_fill(scaled < torch.topk(scaled, s.top_k).values[-1], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        return int(torch.argmax(logits))
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > s.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=row.gen))


def fake_rows(settings: list[dict], vocab: int) -> list:
    """Rows as the sampler reads them, one per settings dict (a prompt of random tokens)."""
    from types import SimpleNamespace

    import torch

    from idiolect.serve.batcher import Sampling

    g = torch.Generator().manual_seed(0)
    return [SimpleNamespace(job=SimpleNamespace(sampling=Sampling(**s), prompt_ids=torch.randint(
        vocab, (5 + i,), generator=g).tolist()), ids=[], gen=torch.Generator().manual_seed(
        100 + i)) for i, s in enumerate(settings)]
