"""The recipe: every training setting, typed, with defaults that work for SmolLM2 on a CPU."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import InputError

SCHEMA_VERSION = 1
BASE_DTYPES = ("float32", "bfloat16", "auto")
ATTENTION = ("sdpa", "eager")
LORA_COMPUTE = ("float32", "base", "peft")
SHOT_OVERHEAD = 40  # tokens per shot beside its body: its subject line, separators, the header


@dataclass
class Recipe:
    """LoRA fine-tuning settings. Saved beside every adapter so a recompile can replay it."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / rank)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "module names to adapt"},
    )
    lora_layers: int = field(
        default=0,
        metadata={"help": "adapt only the top N decoder layers and compute the frozen lower "
                          "layers' hidden states once, reused across epochs (0: all layers)"},
    )
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training set"})
    max_tokens: int = field(default=256, metadata={"help": "tokens per example (prompt + body)"})
    batch_tokens: int = field(default=1024, metadata={"help": "padded tokens per optimizer step"})
    seed: int = field(default=0, metadata={"help": "seed for data order and LoRA init"})
    checkpoint_every: int = field(default=20, metadata={"help": "steps between checkpoints"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: all cores)"})
    grad_checkpoint: bool = field(
        default=False,
        metadata={"help": "recompute each decoder layer's activations in the backward pass "
                          "(less memory, about a third more compute)"},
    )
    loss_chunk: int = field(
        default=0,
        metadata={"help": "body tokens per vocabulary-projection chunk, recomputed in the "
                          "backward pass (bounds the logits' memory; 0: all at once)"},
    )
    shots: int = field(
        default=0,
        metadata={"help": "the user's own training messages nearest each subject, placed in"
                          " every prompt (training, eval, drafting, serving) as examples"
                          " (0: none)"},
    )
    shot_tokens: int = field(default=64, metadata={"help": "tokens of each shot's body"})
    orpo: float = field(
        default=0.0,
        metadata={"help": "weight of ORPO's odds-ratio term: each training body preferred over"
                          " the bare base's own body for the same prompt (sampled once per"
                          " base and cached; full-depth loop, no loss_chunk). 0: plain"
                          " fine-tuning"},
    )
    base_dtype: str = field(
        default="float32",
        metadata={"help": "the frozen base's weights while training: float32, or bfloat16 (half"
                          " the memory; not exact: the LoRA weights, the loss and the adapter"
                          " stay float32, inference uses the float32 base), or auto: bfloat16"
                          " where the CPU multiplies it natively (avx512_bf16, amx_bf16),"
                          " else float32 (chosen when the compile starts, recorded resolved)"},
    )

    attention: str = field(
        default="sdpa",
        metadata={"help": "attention kernel while training: sdpa (PyTorch's fused"
                          " scaled-dot-product attention) or eager (plain matmuls, the"
                          " attention weights kept for the backward pass: more memory)"},
    )

    lora_compute: str = field(
        default="float32",
        metadata={"help": "the LoRA products while training: float32 (one fused float32"
                          " multiply-add onto the base's output: PEFT's numbers, fewer passes),"
                          " base (the same in the base's dtype: with a bfloat16 base, fewer"
                          " casts and bfloat16-rounded LoRA gradients), or peft (PEFT's own"
                          " forward, the reference)"},
    )

    def __post_init__(self) -> None:
        checks = [
            ("rank", self.rank >= 1), ("alpha", self.alpha > 0),
            ("dropout", 0.0 <= self.dropout < 1.0), ("lr", self.lr > 0),
            ("epochs", self.epochs > 0), ("max_tokens", self.max_tokens >= 16),
            ("batch_tokens", self.batch_tokens >= self.example_tokens),
            ("target_modules", bool(self.target_modules)),
            ("checkpoint_every", self.checkpoint_every >= 1), ("threads", self.threads >= 0),
            ("lora_layers", self.lora_layers >= 0),
            ("warmup_steps", self.warmup_steps >= 0), ("loss_chunk", self.loss_chunk >= 0),
            ("base_dtype", self.base_dtype in BASE_DTYPES),
            ("attention", self.attention in ATTENTION),
            ("lora_compute", self.lora_compute in LORA_COMPUTE),
            ("shots", self.shots >= 0), ("shot_tokens", self.shot_tokens >= 1),
            ("orpo", self.orpo >= 0 and (self.orpo == 0 or not (self.lora_layers
                                                                or self.loss_chunk))),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            name = bad[0]
            hint = {"batch_tokens": f" (must be >= max_tokens, plus the shots' tokens:"
                                    f" {self.example_tokens}; or shots 0)",
                    "orpo": " (>= 0; with orpo, lora_layers and loss_chunk must be 0)",
                    "base_dtype": f" (one of {', '.join(BASE_DTYPES)})",
                    "attention": f" (one of {', '.join(ATTENTION)})",
                    "lora_compute": f" (one of {', '.join(LORA_COMPUTE)})"}.get(name, "")
            raise InputError(f"recipe: invalid {name}={getattr(self, name)!r}{hint}")

    @property
    def example_tokens(self) -> int:
        """Tokens per example: ``max_tokens`` for the instruction and body, plus room for the
        shots (each body's ``shot_tokens`` and its subject line)."""
        return self.max_tokens + self.shots * (self.shot_tokens + SHOT_OVERHEAD)

    def resolved(self) -> "Recipe":
        """This recipe with ``base_dtype`` "auto" made the one this machine trains with."""
        if self.base_dtype != "auto":
            return self
        return replace(self, base_dtype="bfloat16" if native_bfloat16() else "float32")

    def prompt_format(self) -> dict:
        """``prompt_format`` of this recipe."""
        return prompt_format(asdict(self))

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "Recipe":
        """Tolerant across versions: unknown keys dropped with a warning, missing keys defaulted."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "schema_version"}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown recipe keys {unknown}", stacklevel=2)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise InputError(f"{source}: {e}") from None
        except InputError as e:  # an invalid field: say which file holds it
            raise (InputError(f"{source}: {e}") if source != "recipe" else e) from None

    @classmethod
    def from_file(cls, path: Path, base: str | None = None) -> "Recipe":
        """A JSON recipe; fields it leaves out are ``base``'s defaults (``for_base``)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: no such recipe file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a JSON recipe ({e})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a recipe is a JSON object")
        return cls.from_dict(for_base(base).to_dict() | data, source=str(path))


def prompt_format(recipe: dict) -> dict:
    """What shapes the prompts an adapter is asked with, from its recipe's fields (a manifest's
    or a catalog entry's, any version: absent fields are the defaults): two adapters are asked
    alike when these are equal. Without shots, shot_tokens does not matter."""
    defaults = {f.name: f.default for f in fields(Recipe) if f.name in ("shots", "shot_tokens")}
    shots = recipe.get("shots", defaults["shots"]) or 0
    if not shots:
        return {"shots": 0}
    return {"shots": shots, "shot_tokens": recipe.get("shot_tokens", defaults["shot_tokens"])}


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (the avx512_bf16 or amx_bf16 flag; read
    on Linux only: elsewhere False)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def for_base(base: str | None, **over) -> Recipe:
    """The recipe ``base`` compiles with unless told otherwise: Recipe's defaults, then the
    fields the registry measured for that packaged base (none for a local base), then
    ``over``. ``base`` None is the default base."""
    from ..bases.registry import DEFAULT_BASE, REGISTRY

    spec = REGISTRY.get(base or DEFAULT_BASE)
    measured = {k: list(v) if isinstance(v, tuple) else v  # the registry's lists are tuples
                for k, v in (spec.recipe if spec else ())}
    return Recipe(**measured | over)


# Exact memory savers together (same loss and gradients per example; smaller batches): layer
# recomputation, the vocabulary loss in chunks of 128 rows, batches of 512 tokens. SmolLM2-135M:
# compile peak 1.8 GB instead of 3.8 GB at 0.66x the tokens/s (bench/results/compile_memory.json).
LOW_MEMORY = {"grad_checkpoint": True, "loss_chunk": 128, "batch_tokens": 512}
