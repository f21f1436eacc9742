"""`idiolect serve --ray-replicas N`: the same OpenAI-compatible app as Ray Serve replicas.

Each replica is one Ray actor that opens the home, loads the base once with every user's active
adapter beside it and runs its own batcher: the app of ``create_app``, built as `idiolect serve`
builds it. Serve's proxy listens on ``host:port`` and hands each request to a replica; any
replica answers any user. Every response names the replica that answered in the
``x-idiolect-replica`` header (``host:pid`` of its process).

A replica opens the home at the path the command was given: on a cluster of several machines
every node needs idiolect installed and the home at that same path (a shared filesystem).
Ray itself is imported only here, and only when this runs (extra ``idiolect[ray-serve]``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from ..errors import IdiolectError, InputError
from ..home import DB_NAME

APP = "idiolect"
REPLICA_HEADER = "x-idiolect-replica"
log = logging.getLogger("ray.serve")  # a replica's log file holds this logger's lines


def require_serve():
    """The ``ray.serve`` module, or one line saying which extra to install."""
    try:
        from ray import serve
    except ImportError:
        raise InputError("--ray-replicas needs Ray Serve: pip install 'idiolect[ray-serve]'"
                         " (or 'ray[serve]==2.60.0')") from None
    return serve


class ReplicaHeader:
    """ASGI middleware: every HTTP response says which replica wrote it. Plain ASGI, so that
    a streamed body and the disconnect check (``request.is_disconnected``) pass through as
    they would without it."""

    def __init__(self, app, name: str) -> None:
        self.app, self.name = app, name.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (REPLICA_HEADER.encode(), self.name)]
            await send(message)

        await self.app(scope, receive, send_named)


def build_app(home_root: str | Path, base: str | None, cfg, token: str | None = None):
    """One replica's app, built on the replica: the home opened from its path, the base and the
    active adapters loaded (``ServedModels``), the batcher started (``create_app``). Its
    lifespan's end stops the batcher: Serve runs the app's lifespan shutdown when it stops a
    replica, and nothing else would end the batcher's thread."""
    from ..home import Home
    from .app import create_app
    from .models import ServedModels

    root = Path(home_root)
    if not (root / DB_NAME).exists():
        raise IdiolectError(f"no idiolect home at {root} on {socket.gethostname()}: every"
                            " node that runs a replica needs the home at this path")
    # Only the models' setup needs the home open: afterwards they read its database on their
    # own read-only connections, one per thread.
    with Home.open(root, create=False) as home:
        models = ServedModels(home, base, log=log.info, lora=cfg.lora)
        failed = models.preload()
    name = f"{socket.gethostname()}:{os.getpid()}"
    log.info("idiolect replica %s: base %s, models %s%s", name, models.base, models.served(),
             f" ({len(failed)} failed to load: {', '.join(failed)})" if failed else "")
    app = create_app(models, cfg, token=token)

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            app.state.batcher.stop()

    app.router.lifespan_context = lifespan
    app.add_middleware(ReplicaHeader, name=name)
    return app


def deployment(home_root: str | Path, base: str | None, cfg, token: str | None = None,
               replicas: int = 1, num_cpus: float = 1.0):
    """The bound Serve application: ``replicas`` copies of ``build_app``'s app, each reserving
    ``num_cpus`` of Ray's CPUs."""
    serve = require_serve()
    root = str(Path(home_root).expanduser().resolve())

    def builder():  # serve.ingress calls it on each replica, without arguments
        return build_app(root, base, cfg, token)

    # Past max_ongoing_requests (5 by default) Serve keeps a replica's requests waiting in its
    # proxy, out of the batcher's sight: let through as many as a batch and the batcher's queue
    # can hold (a request is at least one row), so that the batcher's own limit (HTTP 429
    # past --max-queue) is the one that holds.
    return serve.deployment(serve.ingress(builder)(), name=APP, num_replicas=replicas,
                            ray_actor_options={"num_cpus": num_cpus},
                            max_ongoing_requests=cfg.max_batch + cfg.max_queue).bind()


def start(home_root: str | Path, base: str | None, replicas: int, host: str, port: int, cfg,
          token: str | None = None, address: str | None = None, num_cpus: float = 1.0) -> None:
    """Join Ray (a new local instance when ``address`` is None), start Serve's proxy on
    ``host:port`` and deploy the replicas; returns once every replica is up."""
    serve = require_serve()
    import ray

    if replicas < 1:
        raise InputError(f"--ray-replicas must be at least 1, got {replicas}")
    if num_cpus <= 0:
        raise InputError(f"--ray-cpus must be above 0, got {num_cpus}")
    app = deployment(home_root, base, cfg, token, replicas, num_cpus)
    try:
        # "local", not None: None would join a cluster that `ray start` left on this machine
        # (or RAY_ADDRESS), and stop() would then shut down a Serve that is not ours.
        ray.init(address=address or "local", include_dashboard=False,
                 logging_level=logging.WARNING)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError...: one line
        raise IdiolectError(f"cannot start Ray at {address or 'local'}: {_first_line(e)}"
                            ) from None
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP, route_prefix="/", logging_config={"enable_access_log": False})
    except Exception as e:  # noqa: BLE001 - a replica that cannot build its app fails it
        cause = _deploy_failure(serve) or _first_line(e)
        stop(address)
        raise IdiolectError(f"Ray Serve could not start the replicas: {cause}") from None


def stop(address: str | None = None) -> None:
    """Undo ``start``: a local instance is ours to end whole; on a shared cluster only this
    application is deleted (Serve and other applications keep running)."""
    import ray
    from ray import serve

    try:
        if address is None:
            serve.shutdown()
        else:
            serve.delete(APP)
    finally:
        ray.shutdown()


def run(home_root: str | Path, base: str | None, replicas: int, host: str, port: int, cfg,
        token: str | None = None, address: str | None = None, num_cpus: float = 1.0,
        ready=None) -> None:
    """``start``, call ``ready()`` (when given), serve until Ctrl-C or SIGTERM, ``stop``."""
    start(home_root, base, replicas, host, port, cfg, token, address, num_cpus)
    try:
        if ready is not None:
            ready()
        _wait_for_a_signal()
    finally:
        stop(address)


def _wait_for_a_signal() -> None:
    # SIGTERM's default would end the process without stopping the replicas: on a shared
    # cluster they would go on serving, a local instance would lose its clean shutdown.
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _deploy_failure(serve) -> str | None:
    """The last line of a failed deployment's message: the exception that stopped a replica
    (serve.run's own error says only that the deployment failed)."""
    try:
        app = serve.status().applications.get(APP)
    except Exception:  # noqa: BLE001 - no status to read: serve.run's error has to do
        return None
    for d in (app.deployments.values() if app else ()):
        if d.message.strip() and d.status.name == "DEPLOY_FAILED":
            return d.message.strip().splitlines()[-1]
    return None
