"""The scheduler: one queue of jobs, batches of rows from many users, one LoRA per row.

A *job* is one request: its target (adapter), prompt tokens, sampling settings and ``n`` rows
(choices). The batcher's thread takes jobs from the queue in arrival order until a batch holds
``max_batch`` rows, waiting at most ``max_wait_ms`` after the first one for more to arrive; then
it decodes them together, one token per forward pass for every row, each row through its own
adapter (``ServedModels.forward``: one adapter name per row, ``__base__`` for the bare base;
``lora`` says how: stacked factors or PEFT's mixed batch); with ``group_by_adapter`` a batch
takes only the oldest job's adapter's rows, the others keep their place for a later batch (a
baseline to compare mixed batches with). A row that ends (end of turn, a stop string, its
token limit) or whose client went away leaves the batch at the next step: its rows of the KV
cache are dropped.

Continuous batching: between two decode steps, jobs that arrived meanwhile join the running
batch while it has room (``max_batch`` rows; with ``group_by_adapter`` only the batch's own
adapter's, and none past an older job of another adapter): their prompts are read in one forward pass of their own (prefill), their first
tokens sampled, and their KV cache joined to the running one, both left-padded to one width
(padding is masked, and every row has its own position ids, so a row writes what it would
alone). Columns that every remaining row masks are cut when rows leave. Models whose cache is
not plain full attention (a sliding window) neither join nor cut: new jobs wait for the next
batch. A failure in the newcomers' prefill reaches them only; the running rows go on. A queue
already holding ``max_queue`` rows refuses a job (``QueueFull``: HTTP 429). Each row samples
with its own temperature, top_p and seeded generator, all rows in one batched pass
(``sampler.py``), so a row's text does not depend on its neighbours.

Events go back to the job's asyncio queue, from this thread, with ``call_soon_threadsafe``:
``("delta", index, text)``, ``("done", index, finish_reason, completion_tokens)`` and
``("error", message)``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..generate import GenerationConfig
from .models import LORA_PATHS, ServedModels, Target
from .prefix import PrefixCache


@dataclass
class BatchConfig:
    """How the server batches; every request limit it enforces."""

    max_batch: int = field(default=8, metadata={"help": "rows (choices) in one forward pass"})
    max_wait_ms: float = field(default=20.0, metadata={
        "help": "after a row arrives, how long to wait for more to fill its batch"})
    max_queue: int = field(default=64, metadata={"help": "rows waiting; more: HTTP 429"})
    max_tokens: int = field(default=512, metadata={"help": "new tokens a request may ask for"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "tokens of a prompt"})
    max_n: int | None = field(default=None, metadata={
        "help": "choices one request may ask for (default: max_batch)"})
    repetition_penalty: float = field(default=GenerationConfig.repetition_penalty, metadata={
        "help": "applied to every row, as `idiolect draft` does"})
    group_by_adapter: bool = field(default=False, metadata={
        "help": "a batch holds rows of one adapter only (the oldest job's; others wait): the"
                " one-batch-per-adapter baseline of bench/serve_load.py"})
    join: bool = field(default=True, metadata={
        "help": "jobs that arrive while a batch decodes join it at the next token (continuous"
                " batching); off: they wait for the batch to end (bench/serve_load.py's"
                " mixed-nojoin)"})
    prefix_cache: int = field(default=64, metadata={
        "help": "prompt openings whose keys and values are kept, one entry per adapter and"
                " opening, so a prefill runs only each prompt's own tail (serve/prefix.py); 0: off"})
    lora: str = field(default="stacked", metadata={
        "help": "how a batch applies each row's adapter: 'stacked' (the loaded adapters'"
                " factors stacked per layer, gathered per row) or 'peft' (PEFT's mixed batch,"
                " a loop over the batch's adapters per layer; serves LoRA variants too)"})

    def __post_init__(self) -> None:
        if self.lora not in LORA_PATHS:
            raise ValueError(f"--lora must be one of {', '.join(LORA_PATHS)}")
        if self.max_n is None:
            self.max_n = self.max_batch
        for name in ("max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.prefix_cache < 0:
            raise ValueError("--prefix-cache must not be negative")
        if self.max_wait_ms < 0:
            raise ValueError("--max-wait-ms must not be negative")
        if self.max_n > self.max_batch:
            raise ValueError("--max-n cannot exceed --max-batch (a request's rows share a batch)")


@dataclass
class Sampling:
    max_tokens: int = 160
    temperature: float = GenerationConfig.temperature
    top_p: float = GenerationConfig.top_p
    top_k: int = GenerationConfig.top_k   # not an OpenAI field: `idiolect draft`'s, always
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    #: stop strings of idiolect's own (a line going on into the prompt's words): the text
    #: before one is sent without its trailing white space
    echoes: tuple[str, ...] = ()


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after}s")
        self.retry_after = retry_after


class Job:
    """One request's rows, and the way back to the request's event loop."""

    def __init__(self, target: Target, prompt_ids: list[int], sampling: Sampling, n: int,
                 loop, events) -> None:
        self.target, self.prompt_ids, self.sampling, self.n = target, prompt_ids, sampling, n
        self.loop, self.events = loop, events
        self.cancelled = threading.Event()
        self.arrived = time.monotonic()

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's loop is closed: nobody is listening
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Row:
    """One choice of a job being decoded: its tokens, the text sent so far, its generator."""

    def __init__(self, job: Job, index: int, tokenizer, eos: set[int]) -> None:
        import torch

        self.job, self.index, self.tok, self.eos = job, index, tokenizer, eos
        self.ids: list[int] = []
        self.sent = 0
        seed = job.sampling.seed if job.sampling.seed is not None else secrets.randbits(62)
        self.gen = torch.Generator().manual_seed(seed + index)

    def push(self, token: int) -> str | None:
        """Add a sampled token, send the text it completes; the finish reason when done."""
        s = self.job.sampling
        if token in self.eos and not s.ignore_eos:
            self._send(self._text(), final=True)
            return "stop"
        self.ids.append(token)
        text = self._text()
        for stop in (*s.stop, *s.echoes):
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self._send(text[:at].rstrip() if stop in s.echoes else text[:at], final=True)
                return "stop"
        if len(self.ids) >= s.max_tokens:
            self._send(text, final=True)
            return "length"
        self._send(text, final=False)
        return None

    def _text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def _send(self, text: str, final: bool) -> None:
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                end -= 1
            s = self.job.sampling
            for stop in (*s.stop, *s.echoes):  # hold back what may begin a stop string
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if text[:end].endswith(stop[:k]):
                        end -= k
                        break
            if s.echoes:  # and white space an echo's cut would drop
                end = len(text[:end].rstrip())
        if end > self.sent:
            self.job.emit("delta", self.index, text[self.sent:end])
            self.sent = end


@dataclass
class Stats:
    batches: int = 0
    forward_passes: int = 0
    rows: int = 0
    tokens: int = 0
    cancelled_rows: int = 0
    rejected: int = 0
    failed_batches: int = 0          # batches, or rows joining one, whose forward pass failed
    max_rows_in_batch: int = 0
    joined_rows: int = 0            # rows that joined a batch already decoding
    max_adapters_in_batch: int = 0   # distinct adapters (not the bare base) in one batch
    prefix_rows: int = 0             # rows whose prefill started from a cached prompt opening
    prefix_fills: int = 0            # forward passes that computed openings for the cache
    last_batch: dict = field(default_factory=dict)


class Batcher:
    """The queue and the thread that turns it into mixed-adapter batches."""

    def __init__(self, models: ServedModels, cfg: BatchConfig | None = None) -> None:
        self.models, self.cfg = models, cfg or BatchConfig()
        models.use(self.cfg.lora)  # before the thread: nothing runs on the model yet
        self.stats = Stats()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        tok = models.tokenizer
        eos = models.model.generation_config.eos_token_id
        self.eos = {tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.eos.discard(None)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos)
        self.context = getattr(models.model.config, "max_position_embeddings", None)
        self.prefix = PrefixCache(tok, self.cfg.prefix_cache if _plain_layers(models) else 0)
        self._thread = threading.Thread(target=self._run, name="idiolect-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request side
    def queued_rows(self) -> int:
        with self._cond:  # (any thread: the deque must not change while it is counted)
            return sum(j.n for j in self._pending if not j.cancelled.is_set())

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull(1)
            if self.queued_rows() + job.n > self.cfg.max_queue:
                self.stats.rejected += 1
                raise QueueFull(max(1, round(self.cfg.max_wait_ms / 1000) + 1))
            self._pending.append(job)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def snapshot(self) -> dict:
        from dataclasses import asdict

        with self._cond:
            queued = self.queued_rows()
        return asdict(self.stats) | {"queued_rows": queued, "loaded_adapters":
                                     len(self.models.loaded)}

    # ------------------------------------------------------------------ the thread
    def _take(self) -> list[Job]:
        """The next batch's jobs: wait for one, then up to max_wait_ms for more rows."""
        with self._cond:
            while not self._stopping:
                while self._pending and self._pending[0].cancelled.is_set():
                    self._pending.popleft()
                if self._pending:
                    break
                self._cond.wait()
            if self._stopping:
                return []
            first = self._pending[0]
            key = first.target.name if self.cfg.group_by_adapter else None
            deadline = first.arrived + self.cfg.max_wait_ms / 1000
            while self._rows_of(key) < self.cfg.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._take_now(self.cfg.max_batch, key)  # (the condition's lock is an RLock)

    def _rows_of(self, key: str | None) -> int:
        """Queued rows (of one adapter's name when ``key`` is given)."""
        if key is None:
            return self.queued_rows()
        return sum(j.n for j in self._pending if not j.cancelled.is_set()
                   and j.target.name == key)

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                if self._stopping:
                    return
                continue
            try:
                jobs = [j for j in jobs if self._load(j)]
                if jobs:
                    self._generate(jobs)  # on failure: ``jobs`` is the batch's running jobs
            except Exception as e:  # noqa: BLE001 - one failed batch must not stop the server
                self.stats.failed_batches += 1
                self.models.log(f"serve: a batch failed: {type(e).__name__}: {e}")
                for j in jobs:
                    j.emit("error", "the batch holding this request failed on the server")
            finally:
                self._evict()

    def _take_now(self, room: int, key: str | None, overtake: bool = True) -> list[Job]:
        """Queued jobs that fit in ``room`` rows now, in arrival order, without waiting (of
        adapter ``key`` only, when given: the others keep their place; without ``overtake``
        none is taken past an older job of another adapter)."""
        with self._cond:
            jobs, rows, later = [], 0, []
            while self._pending and not self._stopping:
                job = self._pending[0]
                if job.cancelled.is_set():
                    self._pending.popleft()
                elif key is not None and job.target.name != key:
                    if not overtake:
                        break
                    later.append(self._pending.popleft())  # another adapter's: a later batch
                elif rows + job.n > room:
                    break
                else:
                    jobs.append(self._pending.popleft())
                    rows += job.n
            self._pending.extendleft(reversed(later))
            return jobs

    def _evict(self, running: set[str] = frozenset()) -> None:
        """Unload the adapters no longer active that no queued job and no ``running`` row
        (adapter names) needs."""
        with self._cond:
            keep = {j.target.adapter for j in self._pending} | set(running)
        try:
            self.prefix.drop(self.models.evict(keep))
        except Exception as e:  # noqa: BLE001 - an adapter left loaded costs memory, no more
            self.models.log(f"serve: unloading adapters failed: {type(e).__name__}: {e}")

    def _load(self, job: Job) -> bool:
        try:
            self.models.ensure_loaded(job.target)
            return True
        except Exception as e:  # noqa: BLE001 - this job's adapter, not the server, is broken
            self.models.log(f"serve: adapter {job.target.adapter} could not be loaded: {e}")
            job.emit("error", f"the adapter of {job.target.model!r} could not be loaded")
            return False

    def _generate(self, jobs: list[Job]) -> None:
        """Decode ``jobs`` together until every row ends; jobs that arrive meanwhile join. When
        a step fails, ``jobs`` becomes the jobs with rows still in the batch (those the failure
        reaches: not the finished ones, and the joined ones too) before the error goes up."""
        batch = self._prefill(jobs)
        self._count(batch.rows, batch.names)
        try:
            while batch is not None:
                out = self.models.forward(batch.names, input_ids=batch.ids,
                                          attention_mask=batch.mask, position_ids=batch.pos,
                                          past_key_values=batch.cache, use_cache=True)
                self.stats.forward_passes += 1
                batch.cache = out.past_key_values
                batch = self._advance(batch, out.logits[:, -1, :])
                if self.cfg.join and batch is not None and len(batch.rows) < self.cfg.max_batch:
                    self._join(batch)
        except Exception:
            jobs[:] = list({id(r.job): r.job for r in batch.rows}.values())
            raise

    def _prefill(self, jobs: list[Job]) -> "_Running":
        """The rows of ``jobs`` ready for their first forward pass. A row whose prompt opens
        with a cached prefix (``PrefixCache``) starts from its keys and values and runs only its
        tail: the batch's cache holds the prefixes left-padded to one width, the tails are
        left-padded to another, and the mask has each row's gap between the two."""
        import torch

        from .sampler import BatchSampler

        rows = [Row(j, i, self.models.tokenizer, self.eos) for j in jobs for i in range(j.n)]
        names = [r.job.target.name for r in rows]
        cached = self._prefixes(names, [r.job.prompt_ids for r in rows])
        lens = [0 if kv is None else kv[0][0].shape[2] for kv in cached]
        front = max(lens)
        ids, tail_mask = _left_padded([r.job.prompt_ids[n:] for r, n in zip(rows, lens)],
                                      self.pad)
        front_mask = torch.zeros((len(rows), front), dtype=torch.long)
        for b, n in enumerate(lens):
            front_mask[b, front - n:] = 1
        mask = torch.cat([front_mask, tail_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, front:]
        batch = _Running(rows, names, BatchSampler(rows, self.eos, self.cfg.repetition_penalty),
                         ids, mask, pos)
        if front:
            batch.cache = _left_padded_cache(cached, front)
            self.stats.prefix_rows += sum(n > 0 for n in lens)
        return batch

    def _prefixes(self, names: list[str], prompts: list[list[int]]) -> list[list | None]:
        """Per row, the cached keys and values of its prompt's opening (per layer, one row),
        None where it has none; the openings missing from the cache are computed first, all
        in one forward pass (each through its adapter)."""
        wanted = [(name, self.prefix.opening(p)) for name, p in zip(names, prompts)]
        found = {k: self.prefix.get(*k) for k in set(wanted) if k[1]}
        missing = [k for k, kv in found.items() if kv is None]
        if missing:
            ids, mask = _left_padded([t for _, t in missing], self.pad)
            width = ids.shape[1]
            out = self.models.forward([name for name, _ in missing], input_ids=ids,
                                      attention_mask=mask,
                                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                      use_cache=True)
            self.stats.prefix_fills += 1
            for b, (name, t) in enumerate(missing):
                n = len(t)
                found[(name, t)] = [(layer.keys[b:b + 1, :, width - n:].clone(),
                                     layer.values[b:b + 1, :, width - n:].clone())
                                    for layer in out.past_key_values.layers]
                self.prefix.put(name, t, found[(name, t)])
        return [found[k] if k[1] else None for k in wanted]

    def _advance(self, batch: "_Running", logits) -> "_Running | None":
        """Sample each row's next token, send its text; rows that end leave (None: all did)."""
        import torch

        sampled = batch.sampler.sample(logits.float())
        self.stats.tokens += len(batch.rows)
        keep, tokens = [], []
        for b, (r, token) in enumerate(zip(batch.rows, sampled)):
            reason = None if r.job.cancelled.is_set() else r.push(token)
            if (reason is None and self.context
                    and len(r.job.prompt_ids) + len(r.ids) >= self.context):
                r._send(r._text(), final=True)
                reason = "length"
            if r.job.cancelled.is_set():
                self.stats.cancelled_rows += 1
            elif reason is not None:
                r.job.emit("done", r.index, reason, len(r.ids))
            else:
                keep.append(b)
                tokens.append(token)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        batch.ids = torch.tensor(tokens).unsqueeze(1)
        batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)],
                               dim=1)
        batch.pos = batch.pos[:, -1:] + 1
        return batch

    def _join(self, batch: "_Running") -> None:
        """Queued jobs that fit join the running batch: prefilled on their own, then their
        rows and KV cache appended to the batch's. A failure in the newcomers' prefill reaches
        them only: the running rows go on."""
        if not batch.joinable():
            return
        key = batch.names[0] if self.cfg.group_by_adapter else None
        # grouped: only jobs of the batch's adapter queued before any other adapter's join (a
        # batch whose adapter keeps being asked for must not keep the others waiting forever)
        new = [j for j in self._take_now(self.cfg.max_batch - len(batch.rows), key,
                                         overtake=False)
               if self._load(j)]
        if not new:
            return
        # a batch that never drains still lets old adapters go, but not the newcomers' (taken
        # off the queue already; one may have been replaced while it waited)
        self._evict(set(batch.names) | {j.target.name for j in new})
        try:
            fresh = self._prefill(new)
            self.stats.rows += len(fresh.rows)
            out = self.models.forward(fresh.names, input_ids=fresh.ids,
                                      attention_mask=fresh.mask, position_ids=fresh.pos,
                                      past_key_values=fresh.cache, use_cache=True)
            self.stats.forward_passes += 1
            fresh.cache = out.past_key_values
            self.stats.joined_rows += len(fresh.rows)
            fresh = self._advance(fresh, out.logits[:, -1, :])
            if fresh is not None:
                batch.extend(fresh)  # (all or nothing: the batch is as it was when it fails)
        except Exception as e:  # noqa: BLE001 - the newcomers failed, not the running rows
            self.stats.failed_batches += 1
            self.models.log(f"serve: rows joining a batch failed: {type(e).__name__}: {e}")
            for j in new:
                j.emit("error", "the batch holding this request failed on the server")
            return
        self._note_size(batch.names)

    def _note_size(self, names: list[str]) -> set[str]:
        """A batch of rows of these adapter names runs: the peaks; returns its adapters."""
        adapters = {n for n in names if n != "__base__"}
        s = self.stats
        s.max_rows_in_batch = max(s.max_rows_in_batch, len(names))
        s.max_adapters_in_batch = max(s.max_adapters_in_batch, len(adapters))
        return adapters

    def _count(self, rows: list[Row], names: list[str]) -> None:
        """A batch starts."""
        adapters = self._note_size(names)
        s = self.stats
        s.batches += 1
        s.rows += len(rows)
        s.last_batch = {"rows": len(rows), "adapters": len(adapters),
                        "base_rows": len(names) - sum(n != "__base__" for n in names)}


def _left_padded(seqs: list, pad: int):
    """(ids, attention mask) of token sequences left-padded with ``pad`` to the longest."""
    import torch

    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, q in enumerate(seqs):
        if len(q):
            ids[b, width - len(q):] = torch.tensor(q)
            mask[b, width - len(q):] = 1
    return ids, mask


def _plain_layers(models: ServedModels) -> bool:
    """Whether the base's cache is plain full-attention layers (the only kind a cached prefix
    is spliced into: a sliding window's layer keeps its last tokens, not every column)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=models.model.config).layers
    except Exception:  # noqa: BLE001 - an unknown layout: no prefix caching, nothing else lost
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _left_padded_cache(cached: list[list | None], width: int):
    """A DynamicCache of the rows' cached prefixes, each left-padded with zeros to ``width``
    columns (zeros for a row without one: its mask hides them all)."""
    import torch
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicCache

    like = next(kv for kv in cached if kv is not None)

    def padded(t, like_t):
        if t is None:
            return like_t.new_zeros(like_t.shape[0], like_t.shape[1], width, like_t.shape[3])
        return F.pad(t, (0, 0, width - t.shape[2], 0))
    layers = [tuple(torch.cat([padded(None if kv is None else kv[i][j], like[i][j])
                               for kv in cached]) for j in (0, 1))
              for i in range(len(like))]
    return DynamicCache(ddp_cache_data=layers)


class _Running:
    """A batch being decoded: its rows, their adapter names, sampler, the next step's inputs
    (one token a row, the attention mask so far and position ids) and the KV cache."""

    def __init__(self, rows: list[Row], names: list[str], sampler, ids, mask, pos) -> None:
        self.rows, self.names, self.sampler = rows, names, sampler
        self.ids, self.mask, self.pos = ids, mask, pos
        self.cache = None

    def select(self, keep: list[int]) -> None:
        """Only these rows go on; columns every one of them masks are cut (from a cache of plain
        full-attention layers only: a sliding window's layer holds its last tokens, not one
        column per column of the mask)."""
        import torch

        idx = torch.tensor(keep)
        self.cache.batch_select_indices(idx)
        self.sampler.keep(keep)
        self.mask, self.pos = self.mask[idx], self.pos[idx]
        self.rows, self.names = [self.rows[i] for i in keep], [self.names[i] for i in keep]
        start = int(self.mask.any(0).nonzero()[0])
        if start and self.joinable():
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def joinable(self) -> bool:
        """Whether rows can join: a cache of plain full-attention layers, as left padding
        keeps its meaning only there."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        return (isinstance(self.cache, DynamicCache)
                and all(type(layer) is DynamicLayer for layer in self.cache.layers))

    def extend(self, other: "_Running") -> None:
        """Append ``other``'s rows (a prefilled batch one step in), padding the narrower
        batch's cache and mask on the left. Every tensor is built before any is replaced."""
        import torch
        import torch.nn.functional as F

        width = max(self.mask.shape[1], other.mask.shape[1])
        cols = width - 1  # the cache holds every column but the next token's

        def joined(a, b):
            return torch.cat([F.pad(a, (0, 0, cols - a.shape[2], 0)),
                              F.pad(b, (0, 0, cols - b.shape[2], 0))])
        layers = [(joined(mine.keys, theirs.keys), joined(mine.values, theirs.values))
                  for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True)]
        mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                          F.pad(other.mask, (width - other.mask.shape[1], 0))])
        ids, pos = torch.cat([self.ids, other.ids]), torch.cat([self.pos, other.pos])
        self.sampler.extend(other.sampler)
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values
        self.mask, self.ids, self.pos = mask, ids, pos
        self.rows = self.rows + other.rows
        self.names = self.names + other.names
