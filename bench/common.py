"""Shared bench helpers: run_info / meta_info for results JSON, digests, a measured matmul peak.

Every experiment writes ``bench/results/NAME.json`` with ``run_info`` (command, start, wall time,
git revision, status), ``meta_info`` (package versions, CPU, threads, data digests) and its own
results, so a figure quoted anywhere can be traced to a run and repeated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
RESULTS = REPO / "bench" / "results"


def t_interval(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the mean's t-interval: the interval over a handful of users or
    rounds, where a percentile bootstrap is too narrow (half-width 0 for one value)."""
    import statistics

    from scipy.stats import t

    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, t.ppf((1 + level) / 2, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5


#: the instruction sets that change what a CPU's matmuls reach (recorded when present)
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict:
    """The CPU's name, and its family, model and matmul instruction sets (Linux): "AMD EPYC"
    alone names several generations whose matmul peaks differ by 2x and more."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    info = {"model": fields.get("model name", ""), "cores": os.cpu_count(),
            "machine": platform.machine()}
    for key, name in (("cpu family", "family"), ("model", "model_number"),
                      ("stepping", "stepping")):
        if fields.get(key, "").isdigit():
            info[name] = int(fields[key])
    flags = set(fields.get("flags", "").split())
    if flags:
        info["flags"] = [f for f in MATMUL_FLAGS if f in flags]
    return info


def cpu_label(cpu: dict | None) -> str:
    """How a results file's CPU is named in tables: its name, and family and model where
    recorded (runs before session 18 have the name only)."""
    cpu = cpu or {}
    name = cpu.get("model") or "?"
    if "family" in cpu and "model_number" in cpu:
        name += f" (family {cpu['family']}, model {cpu['model_number']})"
    return name


def package_versions() -> dict:
    """The versions an adapter's manifest records (idiolect.manifest), plus scikit-learn."""
    import importlib.metadata as md

    from idiolect.manifest import package_versions as artifact_versions

    out = artifact_versions()
    try:
        out["scikit-learn"] = md.version("scikit-learn")
    except md.PackageNotFoundError:
        pass
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def git_dirty() -> bool | None:
    """Whether the working tree differs from the commit ``git_rev`` names (tracked files
    changed or untracked ones added outside bench/results and ignored paths); None: unknown."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                              ".", ":(exclude)bench/results"],
                             capture_output=True, text=True).stdout
    except OSError:
        return None
    return bool(out.strip())


def fresh_catalog(server_dir: Path, token: str = "bench"):
    """A catalog server on loopback in a thread, over an emptied ``server_dir`` (this run's
    adapters only). Returns (url, stop)."""
    import shutil

    from idiolect.catalog.server import create_app, serve_in_thread

    shutil.rmtree(server_dir, ignore_errors=True)
    return serve_in_thread(create_app(server_dir, token))


def add_tiny_base(home) -> str:
    """The tests' 2-layer random Llama (``make_tiny_model``, written once into the home)
    registered as base "tiny": a smoke run of a bench. Returns the name."""
    from idiolect.bases.load import add_local

    folder = Path(home.root) / "tiny-model"
    if not (folder / "config.json").exists():
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_tiny_model

        folder.mkdir(parents=True, exist_ok=True)
        make_tiny_model(folder)
    add_local(home, "tiny", folder)
    return "tiny"


def newest_adapter(conn, user: str, base: str):
    """The user's newest adapter on ``base``, whatever its state, or None."""
    return conn.execute("SELECT * FROM adapters WHERE user=? AND base=? ORDER BY created_at DESC,"
                        " id DESC LIMIT 1", (user, base)).fetchone()


def publisher_adapters(home_dir: Path, base: str):
    """The idiolect home that ``bench/xpert.py`` made at ``home_dir`` (opened) and its publishers'
    active adapters on ``base`` (rows of id and user, users ``pub-K`` / ``pubN-K``, by user).
    Exits with a one-line reason where there is no home or no such adapter."""
    from idiolect.home import Home

    if not (home_dir / "idiolect.db").exists():
        raise SystemExit(f"{home_dir}: no idiolect home (make one with bench/xpert.py)")
    home = Home.open(home_dir)
    rows = home.conn.execute("SELECT id, user FROM adapters WHERE base=? AND state='active'"
                             " AND user GLOB 'pub*-*' ORDER BY user", (base,)).fetchall()
    if not rows:
        raise SystemExit(f"{home_dir}: no publisher adapters on {base}")
    return home, rows


def peak_rss_mb() -> float:
    from idiolect.compile.train import peak_rss_mb as own_peak

    return own_peak()


def time_alternately(ways: dict, repeats: int) -> tuple[dict, dict]:
    """Run each of ``ways`` (name -> a callable of no argument) in turn, ``repeats`` rounds,
    each timed on wall and process CPU ("alone": CPU time at least 90% of threads x wall, nothing
    else had the cores). Returns (name -> [timings], name -> the last round's value). Warm up
    before: one-time costs would go to whichever way ran first."""
    import torch

    times, values = {k: [] for k in ways}, {}
    for r in range(repeats):
        for name, way in ways.items():
            w, c = time.perf_counter(), time.process_time()
            values[name] = way()
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            times[name].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                "alone": cpu >= 0.9 * torch.get_num_threads() * wall})
            print(f"repeat {r + 1} {name}: {wall:.1f} s wall", flush=True)
    return times, values


def old_new_summary(times: dict) -> dict:
    """``time_alternately``'s timings of ways "old" and "new": their medians on wall time, the
    speedup of new over old on them, and whether every run had the cores to itself."""
    import statistics

    med = {k: round(statistics.median(t["wall_s"] for t in ts), 2) for k, ts in times.items()}
    return {"runs": times, "median_wall_s": med, "speedup_wall": round(med["old"] / med["new"], 2),
            "all_alone": all(t["alone"] for ts in times.values() for t in ts)}


def matmul_peak_gflops(n: int = 1024, repeats: int = 10, dtype: str = "float32") -> float:
    """GEMM throughput measured now, on this machine (best of ``repeats``), in ``dtype``
    (float32; bfloat16 for a base held in bfloat16)."""
    import torch

    a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every Linear (the vocabulary projection
    once, even when tied to the embedding; LoRA's A and B too). Embedding lookups are free."""
    import torch

    seen, total = set(), 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            total += mod.weight.numel()
    return total


def flops(params: int, tokens: int, seconds: float, kind: str, peak_gflops: float | None) -> dict:
    """Achieved GFLOP/s of ``tokens`` in ``seconds``: 2 x params per token for a forward
    (generation: prompt and new tokens alike), 4 x params for a LoRA training step on a frozen
    base (the forward, plus the backward through the frozen weights; LoRA's own weight gradients
    are negligible). Attention's scores (about 4 x layers x width x context per token, under 10%
    at these lengths) are left out, so the figures are a slight underestimate. Beside the
    matmul peak measured in the same run."""
    per_token = {"forward": 2, "train": 4}[kind] * params
    gflops = per_token * tokens / max(seconds, 1e-9) / 1e9
    out = {"kind": kind, "params": params, "gflop_per_token": round(per_token / 1e9, 3),
           "achieved_gflops": round(gflops, 1)}
    if peak_gflops:
        out["share_of_peak"] = round(gflops / peak_gflops, 3)
    return out


class Run:
    """Context for one experiment: collects results and writes the JSON at the end."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, config
        self.start = time.time()
        self.results: dict = {}
        self.meta: dict = {"packages": package_versions(), "cpu": cpu_info()}
        self.git, self.dirty = git_rev(), git_dirty()  # at the start: the code that ran

    def write(self, status: str = "ok") -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {
            "run_info": {"name": self.name, "command": " ".join([Path(sys.executable).name,
                                                                  *sys.argv]),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start)),
                         "wall_s": round(time.time() - self.start, 1), "git": self.git,
                         "git_dirty": self.dirty,
                         "status": status, "config": self.config},
            "meta_info": self.meta,
            **self.results,
        }
        path = RESULTS / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
        return path
