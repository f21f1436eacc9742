"""The served models: one base loaded once, every user's active adapter loaded beside it.

A request names ``idiolect/USER`` (that user's active adapter on the served base) or the base's
own name (the bare base). Which adapter is active is read from the home's database on every
request, so a promote or a rollback reaches new requests without a restart (hot swap): the new
adapter is loaded under its own id, the old one stays loaded until no queued or running row uses
it, then it is deleted. Adapters are checked like ``load_for_inference`` does: files against
their manifest's sha256, compiled for this base's fingerprint. Weights are read from safetensors
only, never from a pickle.

Two ways to apply a batch's adapters (``lora``): ``stacked`` (the default: ``stacked.py``, every
loaded adapter's factors stacked per layer, two batched matmuls a layer whatever the mix) or
``peft`` (PEFT's mixed batch, ``adapter_names``: a loop over the batch's adapters in every layer;
kept as the reference, and for the LoRA variants stacking refuses). ``use`` switches between them.

Threads: lookups (``resolve``, ``served``) run on the server's request threads with their own
read connection; loading and deleting adapters (``ensure_loaded``, ``evict``) run only on the
batcher's thread, between forward passes, so no module changes under a running batch.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import IdiolectError, NotFound
from ..home import DB_NAME, Home

PREFIX = "idiolect/"
BASE_ROW = "__base__"   # PEFT's name for a row of a mixed batch that uses no adapter
LORA_PATHS = ("stacked", "peft")


def _lora_path(lora: str) -> str:
    if lora not in LORA_PATHS:
        raise ValueError(f"lora must be one of {', '.join(LORA_PATHS)}, not {lora!r}")
    return lora


@dataclass(frozen=True)
class Target:
    """What one request runs on: the model id asked for, whose it is, which adapter."""

    model: str
    user: str | None           # None: the bare base
    adapter: str | None        # adapter id, None for the bare base
    path: Path | None = None

    @property
    def name(self) -> str:
        """The adapter name of its rows (PEFT's and the stack's)."""
        return self.adapter or BASE_ROW


class ServedModels:
    """The base (loaded once), its tokenizer and the adapters loaded on it, by adapter id."""

    def __init__(self, home: Home, base: str | None = None, log=None,
                 lora: str = "stacked") -> None:
        from ..bases import load as bases

        self.lora = _lora_path(lora)
        self.ref = bases.resolve(home, base)
        self.base = self.ref.name
        self.digest = bases.read_fingerprint(self.ref)["digest"]
        self.model, self.tokenizer = bases.load(self.ref, progress=log)
        self.model.eval()
        self.stack = self._new_stack()
        self.loaded: dict[str, str] = {}   # adapter id -> user
        self._targets: dict[str, Target] = {}   # adapter id -> its target (to reload it)
        self._shots: dict[str, object] = {}   # adapter id -> its UserShots
        self.logits_to_keep = 1   # positions whose logits a forward computes (0: all of them)
        self._db = home.root / DB_NAME
        self._local = threading.local()
        self.log = log or (lambda msg: None)

    # ------------------------------------------------------------------ lookups (any thread)
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"{self._db.as_uri()}?mode=ro", uri=True, timeout=30.0,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def active(self) -> dict[str, str]:
        """user -> active adapter id on the served base."""
        rows = self._conn().execute(
            "SELECT user, id FROM adapters WHERE base=? AND state='active' ORDER BY user",
            (self.base,))
        return {r["user"]: r["id"] for r in rows}

    def read_home(self) -> Home:
        """The home on this thread's read-only connection (for ``draft.rank``)."""
        return Home(self._db.parent, self._conn())

    def served(self) -> list[str]:
        """The model ids a client may ask for: the bare base, then one per user."""
        return [self.base, *(PREFIX + u for u in self.active())]

    def resolve(self, model: str) -> Target:
        """The target of a model id, read from the database now (NotFound when there is none)."""
        if model == self.base:
            return Target(model, None, None)
        if not model.startswith(PREFIX) or len(model) == len(PREFIX):
            raise NotFound(f"model {model!r} does not exist: ask for {PREFIX}USER or"
                           f" {self.base!r} (GET /v1/models lists them)")
        user = model[len(PREFIX):]
        row = self._conn().execute(
            "SELECT id, path FROM adapters WHERE user=? AND base=? AND state='active'",
            (user, self.base)).fetchone()
        if row is None:
            known = self._conn().execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone()
            if known is None:
                raise NotFound(f"model {model!r} does not exist: no user {user!r} here")
            raise NotFound(f"model {model!r} does not exist: user {user!r} has no active adapter"
                           f" on base {self.base!r}")
        return Target(model, user, row["id"], Path(row["path"]))

    def shots(self, target: Target, subject: str) -> list[tuple[str, str]]:
        """The cut shots of a request's prompt: none for the bare base or an adapter compiled
        without them; else the user's training messages nearest ``subject`` (indexed once per
        adapter; slow the first time, so the app calls this off its event loop)."""
        if target.adapter is None:
            return []
        from ..compile.retrieve import UserShots, adapter_recipe

        shots = self._shots.get(target.adapter)
        if shots is None:
            recipe = adapter_recipe({"path": str(target.path)})
            shots = self._shots[target.adapter] = UserShots(self._conn(), target.user, recipe,
                                                            self.tokenizer)
        return shots(subject)

    def without_shots(self, target: Target) -> bool:
        """Known already to be prompted without shots: the bare base, or an adapter whose
        ``shots`` were asked for before and that uses none."""
        if target.adapter is None:
            return True
        known = self._shots.get(target.adapter)
        return known is not None and known.index is None

    # ------------------------------------------------------------------ the batcher's thread
    def ensure_loaded(self, target: Target) -> None:
        """Load the target's adapter onto the base if it is not yet (checked first)."""
        if target.adapter is None or target.adapter in self.loaded:
            return
        from .. import adapters
        from ..manifest import Manifest

        folder = target.path
        manifest = Manifest.read(folder)
        if manifest.base_digest != self.digest:
            raise IdiolectError(f"adapter {target.adapter} was compiled for another base than"
                                f" {self.base!r}")
        adapters.verify_files(folder, manifest)
        if self.stack is not None:
            self.stack.add(target.adapter, folder)
        elif self.loaded:
            self.model.load_adapter(str(folder), adapter_name=target.adapter)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(folder),
                                                   adapter_name=target.adapter)
        self.model.eval()
        self.loaded[target.adapter] = target.user
        self._targets[target.adapter] = target
        self.log(f"serve: loaded adapter {target.adapter} for {target.user!r}")

    def evict(self, keep: set[str]) -> list[str]:
        """Delete loaded adapters that are no longer active and that no row in ``keep`` uses;
        with PEFT the last loaded one stays (a PeftModel keeps at least one adapter). Returns
        their ids."""
        active = set(self.active().values())
        gone = [a for a in self.loaded if a not in active and a not in keep]
        for adapter_id in gone:
            if self.stack is not None:
                self.stack.remove(adapter_id)
            elif len(self.loaded) == 1:
                break
            else:
                if adapter_id in self.model.active_adapters:  # PEFT warns when it must pick one
                    self.model.set_adapter(next(a for a in self.loaded if a != adapter_id))
                self.model.delete_adapter(adapter_id)
            del self.loaded[adapter_id], self._targets[adapter_id]
            self._shots.pop(adapter_id, None)
            self.log(f"serve: unloaded adapter {adapter_id} (no longer active)")
        return [a for a in gone if a not in self.loaded]

    def preload(self) -> list[str]:
        """Load every active adapter of the base now; returns the users whose failed (logged)."""
        failed = []
        for user, adapter_id in self.active().items():
            try:
                self.ensure_loaded(self.resolve(PREFIX + user))
            except (IdiolectError, OSError, ValueError) as e:
                self.log(f"serve: {user}'s adapter {adapter_id} could not be loaded: {e}")
                failed.append(user)
        return failed

    def use(self, lora: str) -> None:
        """Apply adapters the ``lora`` way from now on: the loaded ones are loaded again that
        way. Only while no batch runs (a batcher calls it before its thread starts)."""
        if _lora_path(lora) == self.lora:
            return
        targets = list(self._targets.values())
        if self.stack is not None:
            self.stack.clear()
        elif self.loaded:
            self.model = self.model.unload()  # PEFT's layers out: the bare base again
        self.lora = lora
        self.stack = self._new_stack()
        self.loaded.clear()
        self._targets.clear()
        for target in targets:
            self.ensure_loaded(target)

    def _new_stack(self):
        from .stacked import StackedLoRA

        return StackedLoRA(self.model) if self.lora == "stacked" else None

    def forward(self, names: list[str], **inputs):
        """One forward pass of the base (no grad), row b through adapter ``names[b]``
        (``BASE_ROW``: none). Only the last position's logits are computed (``logits_to_keep``):
        the batcher samples from them alone, and a prefill's vocabulary projection on every
        prompt position is about a fifth of its work on SmolLM2."""
        import torch

        inputs.setdefault("logits_to_keep", self.logits_to_keep)
        with torch.no_grad():
            if self.stack is not None:
                with self.stack.rows(names):
                    return self.model(**inputs)
            extra = {"adapter_names": names} if self.loaded else {}
            return self.model(**inputs, **extra)
