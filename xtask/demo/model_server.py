"""The model server of `cargo xtask run -- --demo`: a small OpenAI-compatible chat completions
server that modelmeter can measure like a real one. Keep-alive HTTP/1.1; answers name the model
first (id, object, created, model, as OpenAI, vLLM and TGI write them); each request costs CPU in
proportion to its prompt's length, and the process holds a block of memory from its start, so
that CPU, memory and latency all show. Standard library only.

Usage: model_server.py --port PORT --model NAME [--memory-mib MIB]

    POST /v1/chat/completions   {"model": NAME, "messages": [{"role": "user", "content": "..."}]}
    GET  /v1/models
    GET  /health
"""

import argparse
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Held for the life of the process: the model's "weights".
WEIGHTS = bytearray(64)


def think(prompt):
    """Real CPU work, eight SHA-256 rounds per prompt byte (about 1 µs each): a few ms for a
    short prompt, tens of ms for a long one."""
    data = prompt.encode()
    digest = hashlib.sha256(WEIGHTS[:64]).digest()
    for _ in range(max(1, 8 * len(data))):
        digest = hashlib.sha256(digest + data[:64]).digest()
    return digest.hex()[:12]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model = "demo-llm"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.answer(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "modelmeter-demo"}],
                },
            )
        elif self.path == "/health":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/chat/completions":
            self.answer(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            request = json.loads(body)
            prompt = " ".join(m.get("content", "") for m in request.get("messages", []))
        except (ValueError, AttributeError, TypeError):
            self.answer(400, {"error": {"message": "the body is not a chat request", "type": "invalid_request_error"}})
            return
        token = think(prompt)
        words = len(prompt.split())
        self.answer(
            200,
            {
                "id": f"chatcmpl-{token}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Read {words} words ({token})."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": words, "completion_tokens": 4, "total_tokens": words + 4},
            },
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up after its last answer is normal; anything else is printed.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="demo-llm")
    parser.add_argument("--memory-mib", type=int, default=64)
    args = parser.parse_args()
    # Every page written once, so all of it is resident and counts in the working set.
    global WEIGHTS
    WEIGHTS = bytearray(args.memory_mib << 20)
    for offset in range(0, len(WEIGHTS), 4096):
        WEIGHTS[offset] = offset >> 12 & 0xFF
    Handler.model = args.model
    server = Server(("127.0.0.1", args.port), Handler)
    print(f"serving {args.model} on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
