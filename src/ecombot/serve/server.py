"""`ecombot serve`: the named adapters one server answers with (chat.factory loads them), and the threads it runs on."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

from ecombot.chat.engine import BASE
from ecombot.errors import ConfigError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_adapters(specs: list[str]) -> list[tuple[str, Path]]:
    """`["support=runs/a", "runs/b"]` -> [("support", runs/a), ("b", runs/b)]: NAME=DIR, or DIR named after itself."""
    adapters: list[tuple[str, Path]] = []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).resolve().name, "", spec)
        if not ADAPTER_NAME.match(name) or name == BASE:
            raise ConfigError(f"--adapter {spec!r}: the name must be 1-64 letters, digits, '.', '_' or '-' and not {BASE!r}")
        if name in {n for n, _ in adapters}:
            raise ConfigError(f"--adapter {spec!r}: the name {name!r} is used twice")
        adapters.append((name, Path(path)))
    return adapters


def run_server(app, host: str, port: int) -> bool:
    """Serve `app` until SIGINT or SIGTERM: HTTP on a thread of its own, generation on this (the main) thread;
    returns False if the server could not start (uvicorn logged why: a port in use).

    Why not uvicorn.run with the batcher on a thread: the model runs fastest on the thread that loaded it, and every
    other thread on one core (models/device.py, `one_parallel_thread`, says why and what was measured).
    """
    import uvicorn

    from ecombot.models import one_parallel_thread

    one_parallel_thread()  # request threads (embedding questions) would slow generation just the same
    batcher = app.state.server.batcher
    batcher.caller_works = True
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def serve_http() -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn could not start (it logged why): `server.started` says so below
            pass
        finally:  # stopped, or never started: the main thread stops generating either way
            batcher.stop()

    def on_signal(signum, frame) -> None:
        server.force_exit = server.should_exit  # a second Ctrl-C stops without waiting for requests in flight
        server.should_exit = True

    handlers = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        http = threading.Thread(target=serve_http, name="ecombot-http")
        http.start()
        batcher.work()
        http.join()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return server.started
