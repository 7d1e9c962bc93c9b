"""Console scripts: ``diffusion-serve`` (the API, with the embedded worker unless Redis is used) and
``diffusion-worker`` (a worker pulling jobs from Redis)."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from app import background
from app.logs import configure_logging
from app.settings import Settings, unknown_variables

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]  # uvicorn's: trace is below debug


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model-store", help="model folder (default: DIFFUSION_MODEL_STORE or ./model_store)")
    parser.add_argument("--queue-url", help="redis://... to use Redis (default: DIFFUSION_QUEUE_URL; none: in-process)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    return parser


def _refuse(prog: str, *lines: str) -> NoReturn:
    """Stop before serving: each line, named by the program, and exit code 2 (a setting it cannot run with)."""
    for line in lines:
        print(f"{prog}: {line}", file=sys.stderr)
    raise SystemExit(2)


def _settings(args: argparse.Namespace, *, worker: bool = False, **extra) -> Settings:
    prog = "diffusion-worker" if worker else "diffusion-serve"
    values = {"model_store": args.model_store, "queue_url": args.queue_url, **extra}
    try:
        settings = Settings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:  # one line per setting, naming it; never the value (it may be a secret)
        lines = []
        for error in exc.errors():
            where = f"DIFFUSION_{'_'.join(map(str, error['loc'])).upper()}: " if error["loc"] else ""
            lines.append(f"{where}{error['msg'].removeprefix('Value error, ')}")
        _refuse(prog, *lines)
    configure_logging(args.log_level, settings.log_format)
    for variable in unknown_variables(os.environ):
        logging.getLogger(__name__).warning("%s is not a setting: ignored", variable)
    if worker or settings.runs_embedded_worker:  # a process that runs an engine
        if settings.keep_freed_memory:
            from app.engine.allocator import keep_freed_memory

            keep_freed_memory()  # before any second thread allocates: glibc then fixes its arenas (allocator.py)
        from app.engine.device import device_problem, fit_threads_to_container  # torch: it runs the network anyway

        if (problem := device_problem(settings.device, settings.dtype)) is not None:  # before loading the models
            _refuse(prog, problem)
        fit_threads_to_container()  # before the engine's threads take torch's count
    return settings


def serve(argv: list[str] | None = None) -> None:
    parser = _parser("diffusion-serve", "Serve the models in the model store over HTTP.")
    parser.add_argument("--host", help="bind address (default: DIFFUSION_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: DIFFUSION_PORT or 8000)")
    args = parser.parse_args(argv)
    settings = _settings(args, host=args.host, port=args.port)

    import uvicorn

    from app.api.main import create_app
    from app.queue.factory import open_queue
    from app.queue.protocol import NoModels, QueueUnreachable
    from app.serving import DrainingServer, Drain, protocol_with

    background.hold_sighup()  # a SIGHUP while the models load does not end the process
    background.exit_on_stop_while_starting()  # uvicorn installs its own handlers once it serves
    if settings.metrics_require_key and settings.api_keys_file is None:  # no key could be shown: /metrics open
        _refuse(
            "diffusion-serve",
            "DIFFUSION_METRICS_REQUIRE_KEY needs DIFFUSION_API_KEYS_FILE: without keys, /metrics would be open",
        )
    if settings.api_keys_file is not None:  # before the models load: a bad keys file is found at once
        from app.api.auth import load_keys

        try:
            load_keys(Path(settings.api_keys_file))
        except ValueError as exc:
            _refuse("diffusion-serve", str(exc))
    try:
        backend = asyncio.run(open_queue(settings)) if settings.queue_url is None else None
        if settings.queue_url is not None:
            asyncio.run(_reach_queue(settings))  # Redis answers, or one line says why not
    except (NoModels, QueueUnreachable) as exc:  # fail fast, before binding the port, when nothing can be served
        _refuse("diffusion-serve", str(exc))
    # With Redis the backend holds connections bound to an event loop: it opens in uvicorn's lifespan.
    # On SIGTERM uvicorn stops accepting and lets waiting clients finish (up to the grace time); sync
    # requests still waiting then get an answer (app.api.results), and the process exits with 0.
    drain = Drain(settings.shutdown_grace_s)
    config = uvicorn.Config(
        create_app(settings, queue=backend, drain=drain),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's own lines go through the service's logging: its format, the request's ID
        http=protocol_with(settings.header_timeout_s),
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # 0: no wait (None would be for ever)
    )
    DrainingServer(config, drain).run()


def worker(argv: list[str] | None = None) -> None:
    parser = _parser("diffusion-worker", "Run the models in the model store on jobs taken from Redis.")
    args = parser.parse_args(argv)
    settings = _settings(args, worker=True)
    if settings.queue_url is None:
        _refuse("diffusion-worker", "set DIFFUSION_QUEUE_URL (or --queue-url) to a redis:// URL")
    raise SystemExit(asyncio.run(_run_worker(settings)))


async def _reach_queue(settings: Settings) -> None:
    from app.queue.redis.queue import connect, reach

    redis = connect(settings.queue_url)
    try:
        await reach(redis, settings)
    finally:
        await redis.aclose()


async def _run_worker(settings: Settings) -> int:
    from app.queue.factory import no_models_message
    from app.queue.protocol import NoModels, QueueUnreachable
    from app.queue.redis.queue import connect, reach
    from app.queue.redis.worker import RedisWorker

    background.hold_sighup()  # a SIGHUP while the models load does not end the process
    background.exit_on_stop_while_starting()  # replaced below, once the worker may hold jobs
    redis = connect(settings.queue_url)
    node = RedisWorker(settings, redis)
    if settings.worker_metrics_port:  # the engine's metrics for Prometheus, and the worker's liveness
        from app.metrics import serve_worker_http

        try:
            serve_worker_http(settings.worker_metrics_port, settings.host, node.live, node.ready)
        except OSError as exc:  # the port is taken, say
            print(
                f"diffusion-worker: DIFFUSION_WORKER_METRICS_PORT {settings.worker_metrics_port}: {exc}",
                file=sys.stderr,
            )
            await redis.aclose()
            return 2
    try:
        await reach(redis, settings)  # before the models load: a worker without Redis has nothing to do
        await node.start()
    except (NoModels, QueueUnreachable) as exc:
        print(f"diffusion-worker: {exc}", file=sys.stderr)
        await redis.aclose()
        return 2
    if not node.serves_anything:
        print(f"diffusion-worker: {no_models_message(settings, node.entries)}", file=sys.stderr)
        await node.stop(grace=0)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background.on_sighup(node.reload_store)  # kill -HUP: read the model store again
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(node.dead.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    logging.getLogger(__name__).info("stopping: finishing held jobs for up to %.0fs", settings.shutdown_grace_s)
    stopped = await background.within(
        node.stop(), settings.shutdown_grace_s + background.CLOSE_MARGIN_S, "stopping the worker"
    )
    await redis.aclose()
    return 1 if node.dead.is_set() or not stopped else 0


def keys(argv: list[str] | None = None) -> None:
    """``diffusion-keys create NAME --scopes generate,denoise``: make a key, print it once, store its hash;
    ``diffusion-keys list``; ``diffusion-keys revoke NAME``."""
    import json

    from app.api.auth import load_keys

    parser = argparse.ArgumentParser(prog="diffusion-keys", description="Manage the service's API keys.")
    parser.add_argument(
        "--file",
        default=os.environ.get("DIFFUSION_API_KEYS_FILE", "api_keys.json"),
        help="the keys file (default: DIFFUSION_API_KEYS_FILE or ./api_keys.json)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; it is printed once and only its hash is stored")
    create.add_argument("name")
    create.add_argument("--scopes", default="generate,denoise", help="comma-separated: generate, denoise, admin")
    create.add_argument("--requests-per-minute", type=int)
    create.add_argument("--max-concurrent-jobs", type=int)
    create.add_argument("--max-priority", default="high", choices=["low", "normal", "high"])
    commands.add_parser("list", help="the keys' names, scopes and limits (never the keys)")
    revoke = commands.add_parser("revoke", help="remove a key")
    revoke.add_argument("name")
    args = parser.parse_args(argv)
    path = Path(args.file).resolve()  # a link to the keys file: the file it names is rewritten, the link kept

    def read() -> list[dict]:
        try:
            return [k.model_dump(exclude_none=True) for k in load_keys(path)] if path.exists() else []
        except ValueError as exc:
            raise SystemExit(f"diffusion-keys: {exc}") from None

    if args.command == "list":
        for entry in read():
            print(json.dumps({k: v for k, v in entry.items() if k != "sha256"}))
        return
    # one change at a time: two runs at once (two operators, a script) would each write what they read, and
    # the later would undo the earlier (a revoked key back in force, a created one never stored)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock is the folder's: nothing is left beside the file
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        key = _change_keys(args, path, read())
    finally:
        os.close(folder)  # and the lock with it
    if key is not None:
        print(key)  # shown once, once it is stored: only its sha256 is kept


def _change_keys(args: argparse.Namespace, path: Path, entries: list[dict]) -> str | None:
    """Create or revoke a key in ``entries`` (read under the lock) and write the file whole; the new key."""
    import json
    import tempfile

    from app.api.auth import KEYS, new_key_entry

    key = None
    if args.command == "revoke":
        kept = [e for e in entries if e["name"] != args.name]
        if len(kept) == len(entries):
            raise SystemExit(f"diffusion-keys: no key named {args.name!r} in {path}")
        entries = kept
    else:
        if any(e["name"] == args.name for e in entries):
            raise SystemExit(f"diffusion-keys: a key named {args.name!r} exists in {path}; revoke it first")
        try:
            key, entry = new_key_entry(
                args.name,
                [s.strip() for s in args.scopes.split(",") if s.strip()],
                rpm=args.requests_per_minute,
                max_jobs=args.max_concurrent_jobs,
                max_priority=args.max_priority,
            )
        except ValueError as exc:
            raise SystemExit(f"diffusion-keys: {exc}") from None
        entries.append(entry)
    KEYS.validate_python(entries)
    made, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # readable by its owner only
    if path.exists():  # as it was: readable by the service's user, if the operator made it so
        before = path.stat()
        os.fchmod(made, before.st_mode & 0o777)
        try:
            os.fchown(made, before.st_uid, before.st_gid)
        except PermissionError:
            if before.st_uid != os.getuid():
                print(f"diffusion-keys: {path} is now owned by this user, not uid {before.st_uid}", file=sys.stderr)
    with os.fdopen(made, "w") as file:
        file.write(json.dumps(entries, indent=2) + "\n")
    os.replace(temporary, path)  # whole or not at all
    return key


def main(argv: list[str] | None = None) -> None:
    """``python -m app.cli [serve|worker|keys] ...``: the console scripts without installing them."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(argv[1:])
    elif argv[:1] == ["keys"]:
        keys(argv[1:])
    else:
        serve(argv[1:] if argv[:1] == ["serve"] else argv)


if __name__ == "__main__":
    main()
