"""Console scripts: ``diffusion-serve`` runs the API with the embedded worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn

from app.settings import Settings


def serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="diffusion-serve", description="Serve the models in the model store over HTTP.")
    parser.add_argument("--host", help="bind address (default: DIFFUSION_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: DIFFUSION_PORT or 8000)")
    parser.add_argument("--model-store", help="model folder (default: DIFFUSION_MODEL_STORE or ./model_store)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "model_store": args.model_store}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app.api.main import NoModels, create_app, open_backend

    try:
        backend = asyncio.run(open_backend(settings))  # fail fast, before binding the port, when nothing can be served
    except NoModels as exc:
        print(f"diffusion-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(create_app(settings, queue=backend), host=settings.host, port=settings.port, log_level=args.log_level)


if __name__ == "__main__":
    serve()
