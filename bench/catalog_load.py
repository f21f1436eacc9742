"""Loopback load test of the catalog server: the real server (``idiolect catalog serve``,
uvicorn) on 127.0.0.1 with a few tiny published adapters, and C concurrent clients making R
requests each, mixing list (GET /adapters), match (POST /match with a card) and download
(GET /adapters/ID/files/NAME, sha256-checked like the client's pull).

    .venv/bin/python bench/catalog_load.py --clients 50 --requests 20

writes bench/results/catalog_load.json: errors (must be zero), p50/p95/p99/max latency per
endpoint, throughput. A request is an error when it raises, answers non-2xx, or a download
does not hash to the listed sha256. ``tests/reliability/test_catalog_security.py`` runs a small
version (8 clients x 5 requests) against an in-thread server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "load-test-token"
DIGEST = "ab" * 32  # the base fingerprint the tiny adapters claim (the server does not load it)
WORDS = ("the a of to in and is it for on with this that we fix add use make patch test commit"
         " file code bug read write when not but so be as at by from our you can should memory"
         " leak cache index config path refs object tree blob").split()
NEUTRAL = ["Thanks for the note. I will look at the patch tomorrow and get back to you.",
           "Sounds good to me. Could we meet on Monday to discuss the release plan?",
           "I think the fix is fine, but we should add a test before merging it.",
           "Sorry for the delay. The report is attached; let me know if anything is missing."]


def texts(style: str, seed: int, n: int = 24) -> list[str]:
    rng = random.Random(f"{style}:{seed}")
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 40))]
        if style == "shout":
            out.append("\n".join(" ".join(w.capitalize() for w in words[j:j + 5]) + "!"
                                 for j in range(0, len(words), 5)))
        else:
            out.append(" ".join(words) + ".")
    return out


def card(style: str, seed: int):
    from idiolect.catalog.card import card_from_texts

    return card_from_texts(texts(style, seed), NEUTRAL, base_digest=DIGEST, base_name="tiny",
                           embedder="hash")


def tiny_adapter(folder: Path, seed: int, rank: int = 4, hidden: int = 64) -> Path:
    """A LoRA adapter folder (2 layers, q_proj/v_proj) with a valid manifest; numpy only."""
    import numpy as np
    from safetensors.numpy import save_file

    from idiolect import adapters
    from idiolect.home import new_id, utcnow
    from idiolect.manifest import Manifest

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    tensors = {}
    for i in range(2):
        for mod in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, hidden), np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((hidden, rank), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "task_type": "CAUSAL_LM",
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "idiolect/tiny"}))
    Manifest(id=new_id(), user=f"pub{seed}", created_at=utcnow(),
             base={"name": "tiny", "fingerprint": {"digest": DIGEST}},
             snapshot={"digest": "c" * 64, "messages": 24, "examples": 24},
             recipe={"rank": rank, "alpha": 2.0 * rank, "lora_layers": 0,
                     "target_modules": ["q_proj", "v_proj"]},
             files=adapters.file_digests(folder)).write(folder)
    return folder


def publish_tiny(url: str, token: str, n: int, work: Path) -> list[dict]:
    """Publish ``n`` tiny adapters (alternating styles) through the real client."""
    from idiolect.catalog.client import CatalogClient

    client = CatalogClient(url, token)
    return [client.publish(tiny_adapter(work / f"a{i}", i), card(("plain", "shout")[i % 2], i))
            for i in range(n)]


# ------------------------------------------------------------------------------ the load
def _percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {}

    def q(p: float) -> float:  # nearest rank
        return xs[min(len(xs) - 1, max(0, int(round(p * len(xs) + 0.5)) - 1))]

    return {"n": len(xs), "p50_ms": round(q(0.50) * 1000, 2), "p95_ms": round(q(0.95) * 1000, 2),
            "p99_ms": round(q(0.99) * 1000, 2), "max_ms": round(xs[-1] * 1000, 2),
            "mean_ms": round(statistics.fmean(xs) * 1000, 2)}


def load(url: str, clients: int, requests: int, seed: int = 0,
         mix: tuple[float, float, float] = (0.3, 0.3, 0.4)) -> dict:
    """``clients`` threads x ``requests`` each, started together; latency per endpoint."""
    import httpx

    entries = httpx.get(f"{url}/adapters", timeout=60).json()
    files = [(e["id"], name, f["sha256"]) for e in entries for name, f in e["files"].items()]
    queries = [card(style, 1000 + i).to_json() for i, style in enumerate(("plain", "shout") * 4)]
    lat: dict[str, list[float]] = {"list": [], "match": [], "download": []}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(k: int) -> None:
        rng = random.Random(seed * 100003 + k)
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            for _ in range(requests):
                kind = rng.choices(("list", "match", "download"), weights=mix)[0]
                t = time.perf_counter()
                try:
                    if kind == "list":
                        r = http.get("/adapters")
                        ok = r.status_code == 200 and len(r.json()) == len(entries)
                    elif kind == "match":
                        r = http.post("/match", content=rng.choice(queries),
                                      headers={"content-type": "application/json"})
                        ok = r.status_code == 200 and len(r.json()["matches"]) == len(entries)
                    else:
                        aid, name, sha = rng.choice(files)
                        r = http.get(f"/adapters/{aid}/files/{name}")
                        ok = r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
                    why = None if ok else f"{kind}: HTTP {r.status_code}"
                except Exception as e:  # noqa: BLE001 - counted, not raised
                    why = f"{kind}: {type(e).__name__}: {e}"
                dt = time.perf_counter() - t
                with lock:
                    lat[kind].append(dt)
                    if why:
                        errors.append(why)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    total = sum(len(v) for v in lat.values())
    return {"clients": clients, "requests_per_client": requests, "requests": total,
            "errors": len(errors), "error_samples": errors[:10], "wall_s": round(wall, 2),
            "requests_per_s": round(total / wall, 1), "adapters": len(entries),
            "latency": {k: _percentiles(v) for k, v in lat.items()},
            "all": _percentiles([x for v in lat.values() for x in v])}


# ------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, token: str, log: Path) -> tuple[str, subprocess.Popen]:
    """``idiolect catalog serve`` (uvicorn) on a free loopback port; waits for /healthz."""
    import httpx

    port = free_port()
    # the CLI child reads its home from IDIOLECT_HOME (a scratch one beside the catalog root)
    env = dict(os.environ, IDIOLECT_HOME=str(root.parent / "home"), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "idiolect.cli", "catalog", "serve",
                                 "--host", "127.0.0.1", "--port", str(port), "--root", str(root),
                                 "--token", token], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"catalog server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("catalog server did not answer /healthz within 120 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import Run

    run = Run("catalog_load", vars(args) | {"mix": {"list": 0.3, "match": 0.3, "download": 0.4},
                                             "server": "idiolect catalog serve (uvicorn, 1 worker)"
                                                       " on 127.0.0.1"})
    with tempfile.TemporaryDirectory(prefix="idiolect-catalog-load-") as tmp:
        tmp = Path(tmp)
        url, proc = start_server(tmp / "server", TOKEN, tmp / "server.log")
        try:
            published = publish_tiny(url, TOKEN, args.adapters, tmp)
            res = load(url, args.clients, args.requests, args.seed)
            res["adapter_bytes"] = sum(f["size"] for p in published for f in p["files"].values())
            healthy = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    res["server_alive_after"] = healthy
    run.results = {"load": res}
    status = "ok" if res["errors"] == 0 and healthy else "errors"
    path = run.write(status)
    lat = res["latency"]
    print(f"{res['requests']} requests from {args.clients} clients in {res['wall_s']}s"
          f" ({res['requests_per_s']}/s), {res['errors']} errors -> {path}")
    for k, v in lat.items():
        print(f"  {k:<9} n={v.get('n', 0):<5} p50 {v.get('p50_ms')} ms  p99 {v.get('p99_ms')} ms")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
