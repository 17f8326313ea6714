"""--config.mode=serve: the decoder of a workdir (or finetune.init) behind the OpenAI-compatible API
(lmjax/serving/server.py) with continuous batching, until SIGTERM / Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket

import uvicorn
from etils import epath
from ml_collections import ConfigDict

from lmjax import host
from lmjax.errors import InputError
from lmjax.serving import batcher, live
from lmjax.serving.server import create_app, is_loopback


def run(config: ConfigDict, workdir: str | epath.PathLike) -> None:
    """Serves the decoder of the workdir (or finetune.init) until SIGTERM / Ctrl-C."""
    settings = config.serve
    api_key = os.environ.get(settings.api_key_env) or None
    if api_key is None and not is_loopback(settings.host):
        raise InputError(
            f"serve.host={settings.host!r} is reachable from other machines: put an API key in the "
            f"environment variable {settings.api_key_env} (clients send 'Authorization: Bearer <key>') or "
            "serve on 127.0.0.1"
        )
    loaded = live.load(config, workdir)
    host.release_freed_memory()  # the parameters as read (fp32 before int8) are garbage now
    engine = batcher.Batcher(loaded.runner(), slots=settings.slots, max_queue=settings.max_queue)
    engine.warm_up()
    app = create_app(engine.start(), model_name=loaded.name, api_key=api_key, max_tokens=settings.max_tokens)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family)
    except OSError as e:
        raise InputError(
            f"cannot listen on {settings.host}:{settings.port} ({e.strerror}); choose another serve.port"
        ) from None
    address, port = sock.getsockname()[:2]
    print(
        f"serving {loaded.name!r} ({loaded.source}; {settings.slots} slots of {engine.runner.cache_len} "
        f"tokens{', int8' if settings.quantize else ''}) on http://{address}:{port}/v1"
        + (" (API key required)" if api_key else ""),
        flush=True,
    )
    # uvicorn handles SIGTERM / SIGINT (stop accepting, finish requests in flight), then raises the signal
    # again with the previous handlers: these make that a normal return (exit status 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None))
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        print("server stopped", flush=True)
