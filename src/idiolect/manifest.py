"""The adapter manifest: one typed record, one reader, one writer.

``manifest.json`` sits beside the PEFT files of every adapter folder and pins what the adapter is
a build of: the base (name + fingerprint), the training-set snapshot, the frozen eval set, the
recipe, the parent (warm start), metrics, timings, package versions, the sha256 of the PEFT files,
and the gate's decision. Every writer (compile, catalog pull, merge, the benches) builds a
``Manifest``; every reader goes through ``Manifest.read``.

Across versions the reader is tolerant (as peft's configs are): unknown keys are dropped with a
warning, missing optional keys take their defaults, and a schema newer than this code is refused.
"""

from __future__ import annotations

import json
import platform
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.json"
SCHEMA_VERSION = 1
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
REQUIRED = ("id", "user", "base", "snapshot", "recipe", "created_at")


@dataclass
class Manifest:
    """What an adapter folder is a build of. Nested parts stay plain JSON objects."""

    id: str
    user: str
    base: dict[str, Any]           # {"name", "fingerprint": {...}}
    snapshot: dict[str, Any]       # {"digest", "messages", "examples"}
    recipe: dict[str, Any]         # the resolved Recipe.to_dict()
    created_at: str
    schema_version: int = SCHEMA_VERSION
    eval_set: dict[str, Any] | None = None   # {"digest", "size"} of the user's frozen eval set
    run: str | None = None         # the compile run (runs table) that made it
    parent: str | None = None      # adapter it started from (warm start, merge)
    metrics: dict[str, Any] = field(default_factory=dict)   # training loss, "eval" scores
    timings: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    packages: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)     # PEFT file name -> sha256
    warm_start: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # the last gate decision (pipeline.Decision.record())

    @property
    def base_name(self) -> str:
        return self.base["name"]

    @property
    def base_digest(self) -> str:
        return self.base["fingerprint"]["digest"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise InputError(f"{where}: a manifest is a JSON object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise InputError(f"{where}: manifest schema {version!r} is newer than this idiolect"
                             " knows")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{where}: ignoring unknown manifest keys {unknown}", stacklevel=3)
        missing = [k for k in REQUIRED if data.get(k) is None]
        if missing:
            raise InputError(f"{where}: manifest lacks {', '.join(missing)}")
        if not isinstance(data["base"], dict) or not isinstance(
                data["base"].get("fingerprint"), dict) or "name" not in data["base"]:
            raise InputError(f"{where}: manifest base names no fingerprint")
        kept = {k: v for k, v in data.items() if k in known}
        for name in ("metrics", "timings", "tokens", "packages", "files"):
            if name in kept and not isinstance(kept[name], dict):  # null from older writers
                kept[name] = {}
        return cls(**kept)

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{folder}: not an idiolect adapter (no {MANIFEST})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: unreadable manifest ({e})") from None
        return cls.from_dict(data, str(path))

    def write(self, folder: Path) -> None:
        """manifest.json (atomic), and recipe.json beside it (the recipe to replay)."""
        from .home import atomic_write_json

        atomic_write_json(Path(folder) / MANIFEST, self.to_dict())
        atomic_write_json(Path(folder) / RECIPE_FILE, self.recipe)


def package_versions() -> dict[str, str]:
    """Versions of idiolect, Python and the libraries an artifact depends on."""
    import importlib.metadata as md

    from . import __version__

    out = {"idiolect": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
