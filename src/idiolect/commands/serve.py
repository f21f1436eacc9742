"""`idiolect serve`: the OpenAI-compatible server, every user's active adapter on one base."""

from __future__ import annotations

from dataclasses import asdict

import click

from ..serve.models import LORA_PATHS
from ._io import CONTEXT, port_free
from ._io import err as _err
from ._io import home as _home

TOKEN_ENV = "IDIOLECT_SERVE_TOKEN"


@click.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--base", "base_name", help="Base to serve (default: the default base).")
@click.option("--token", envvar=TOKEN_ENV, show_envvar=True,
              help="Bearer token every request must carry (none: no check).")
@click.option("--max-batch", default=8, show_default=True, help="Rows in one forward pass.")
@click.option("--max-wait-ms", default=20.0, show_default=True,
              help="How long a batch waits for more rows after its first.")
@click.option("--max-queue", default=64, show_default=True,
              help="Rows waiting for a batch; more are refused with HTTP 429.")
@click.option("--max-tokens", default=512, show_default=True,
              help="New tokens one request may ask for.")
@click.option("--prefix-cache", default=64, show_default=True, type=click.IntRange(min=0),
              help="Prompt openings whose keys and values are kept (an entry per adapter and"
                   " opening), so a prefill runs only each prompt's own tail; 0: off.")
@click.option("--lora", type=click.Choice(LORA_PATHS), default=LORA_PATHS[0], show_default=True,
              help="How a batch applies each row's adapter: stacked (every loaded adapter's"
                   " factors stacked per layer) or peft (PEFT's mixed batch, which also serves"
                   " LoRA variants such as DoRA).")
@click.option("--ray-replicas", type=click.IntRange(min=1), metavar="N",
              help="Serve through Ray Serve: this many replicas, each with the base and every"
                   " adapter (extra idiolect[ray-serve]).")
@click.option("--ray-address", metavar="ADDR",
              help="Ray cluster to join (auto: the one `ray start` runs here; default: a new"
                   " local one).")
@click.option("--ray-cpus", type=click.FloatRange(min=0, min_open=True), metavar="CPUS",
              help="Ray CPUs each replica reserves (default 1).")
def serve(host, port, base_name, token, max_batch, max_wait_ms, max_queue, max_tokens,
          prefix_cache, lora, ray_replicas, ray_address, ray_cpus) -> None:
    """Serve every user's active adapter through the OpenAI API (/v1).

    Ask for model `idiolect/USER` (or the base's name for the bare base); the last user message
    is the subject of the message to write, a line `To: a@b` its recipients."""
    from ..errors import InputError
    from ..serve.batcher import BatchConfig

    try:
        cfg = BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          max_tokens=max_tokens, prefix_cache=prefix_cache, lora=lora)
    except ValueError as e:
        raise InputError(str(e)) from None
    if ray_replicas is None and (ray_address or ray_cpus):
        raise InputError("--ray-address and --ray-cpus need --ray-replicas")
    if ray_replicas is not None:
        _serve_on_ray(host, port, base_name, token, cfg, ray_replicas, ray_address, ray_cpus)
        return

    import uvicorn

    from ..serve.app import create_app
    from ..serve.models import ServedModels

    port_free(host, port)
    models = ServedModels(_home(), base_name, log=_err, lora=lora)
    failed = models.preload()
    served = models.served()
    _err(f"serve: base {models.base}, {len(served) - 1} user(s) with an active adapter"
         + (f" ({len(failed)} failed to load: {', '.join(failed)})" if failed else ""))
    _err(f"serve: config {asdict(cfg)}")
    _err(f"serve: OpenAI API at http://{host}:{port}/v1 (models: {', '.join(served)});"
         f" token {'required' if token else 'off'}")
    app = create_app(models, cfg, token=token)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.batcher.stop()


def _serve_on_ray(host, port, base_name, token, cfg, replicas, address, cpus) -> None:
    """The same app as replicas on Ray Serve: the base is loaded there, not here."""
    from ..bases import load as bases
    from ..serve import ray_app

    ray_app.require_serve()
    ref = bases.resolve(_home(), base_name)
    # A packaged base is dequantized into the home on first use: once here, rather than by
    # every replica at once into the same folder.
    bases.ensure_cached(ref, progress=_err)
    bases.read_fingerprint(ref)
    base = ref.name
    if address is None:  # a local instance's proxy listens on this machine
        port_free(host, port)
    _err(f"serve: base {base} on {replicas} Ray Serve replica(s) ({address or 'local Ray'}),"
         f" config {asdict(cfg)}")
    ray_app.run(_home().root, base, replicas, host, port, cfg, token=token, address=address,
                num_cpus=cpus or 1.0,
                ready=lambda: _err(f"serve: OpenAI API at http://{host}:{port}/v1;"
                                   f" token {'required' if token else 'off'}"))
