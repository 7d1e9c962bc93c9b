"""Pieces shared by test modules (test modules never import from each other)."""

from __future__ import annotations

import time
from pathlib import Path

from app.settings import Settings


def make_settings(store: Path, **overrides) -> Settings:
    # float32: the same numbers on every CPU (auto picks bf16 on CPUs with native bf16; its own tests ask for it)
    values = dict(model_store=store, device="cpu", dtype="float32", max_batch=64, denoise_tile=64, denoise_overlap=8)
    values.update(overrides)
    return Settings(**values)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records every request it gets (path, headers, body) and answers
    with the scripted statuses in turn (the last one repeats); ``delay_s`` holds each answer that long."""

    def __init__(self, statuses=(200,), delay_s: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.statuses, self.delay_s, self.received = list(statuses), delay_s, []
        self._got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._got:
                    status = receiver.statuses[min(len(receiver.received), len(receiver.statuses) - 1)]
                    receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    receiver._got.notify_all()
                time.sleep(receiver.delay_s)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        with self._got:
            if not self._got.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{len(self.received)} webhook requests, expected {count}")
            return list(self.received)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
