"""A local stand-in for an OpenAI-compatible chat-completions server, for tests.

It speaks the real protocol over HTTP (``POST /v1/chat/completions``), so
the ``openai`` client talks to it unchanged.  ``mode`` chooses the answer:

- ``echo``: a valid report built from the facts it was sent (``hold`` per symbol);
- ``invalid_json``: content that is not JSON;
- ``bad_schema``: JSON that breaks the report schema (confidence 7);
- ``stranger``: a valid report about a symbol it was not given;
- ``slow``: answers after ``delay`` seconds;
- ``error``: HTTP 500.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatStandIn:
    """Serves on 127.0.0.1 (a free port) until :meth:`close`; ``requests`` records the bodies received."""

    def __init__(self, *, mode: str = "echo", delay: float = 3.0):
        self.mode, self.delay = mode, delay
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict) -> tuple[int, dict]:
        if self.mode == "error":
            return 500, {"error": {"message": "the model crashed", "type": "server_error"}}
        if self.mode == "slow":
            time.sleep(self.delay)
        request = json.loads(body["messages"][-1]["content"])
        content = json.dumps(self._report(request["kind"], request["facts"]))
        if self.mode == "invalid_json":
            content = "Sure! Here is my analysis: buy everything."
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }

    def _report(self, kind: str, facts: dict) -> dict:
        symbols = list(facts.get("market", {}).get("symbols", {})) or [facts.get("strategy", "strategy")]
        if self.mode == "stranger":
            symbols = ["ZZZZ"]
        confidence = 7 if self.mode == "bad_schema" else 0.5
        return {
            "kind": kind,
            "summary": f"stand-in review of {len(symbols)} symbol(s)",
            "recommendations": [
                {
                    "symbol": s,
                    "action": "hold",
                    "confidence": confidence,
                    "rationale": "stand-in",
                    "figures": {},
                }
                for s in symbols
            ],
            "figures": {"symbols": float(len(symbols))},
            "warnings": [],
        }

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.requests.append(body)
                self._send(*standin.answer(body))

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args) -> None:
                pass

        return Handler
