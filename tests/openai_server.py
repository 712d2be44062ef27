"""An OpenAI-compatible HTTP server for tests: a tiny transformers model behind the real protocol.

It serves `/v1/models`, `/v1/chat/completions` (generation, and first-token `logprobs` /
`top_logprobs` with vLLM's `continue_final_message` and `logprob_token_ids`) and vLLM's
`/tokenize` on 127.0.0.1, and takes scripted faults: `faults` is a list consumed one per chat
request, each `None` (answer normally), `"429"` (with `Retry-After`), `"500"`, `"timeout"` (answer
only after `slow_s`) or `"truncate"` (announce the whole body, send half, close). Every request's
body and Authorization header are kept in `requests`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from auf_assets.core.judging import DIGITS
from resources.transformers_lm import TransformersLM


class FakeServer:
    def __init__(
        self,
        model_dir: str,
        served_name: str = "tiny",
        *,
        max_logprobs: int = 20,
        exact_token_ids: bool = True,
        strict: bool = False,
        retry_after: str = "0.2",
        slow_s: float = 2.0,
    ):
        self.lm = TransformersLM(model_dir, device="cpu", dtype="fp32")
        self.served_name = served_name
        self.max_logprobs = max_logprobs
        self.exact_token_ids = exact_token_ids  # vLLM >= 0.33: logprob_token_ids
        self.strict = strict  # a hosted API: extension fields are an error
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.faults: list[str | None] = []
        self.reply: str | None = None  # the text of every generation, as a server decoded it
        self.fail_after: int | None = None  # every chat request after this many answers: 500
        self.requests: list[dict] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time on the tiny model

    # -- the protocol -----------------------------------------------------------------------

    def _fault(self) -> str | None:
        with self._lock:
            if self.fail_after is not None and self.answered >= self.fail_after:
                return "500"
            return self.faults.pop(0) if self.faults else None

    def chat(self, body: dict) -> tuple[int, dict]:
        if body.get("model") != self.served_name:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        extensions = [k for k in ("chat_template_kwargs", "logprob_token_ids") if k in body]
        if self.strict and extensions:
            return 400, {"error": {"message": f"Unrecognized request argument: {extensions[0]}"}}
        if "logprob_token_ids" in body and not self.exact_token_ids:
            return 400, {"error": {"message": "extra field not permitted: logprob_token_ids"}}
        messages = body["messages"]
        prefix = ""
        if body.get("continue_final_message") and messages[-1]["role"] == "assistant":
            prefix, messages = messages[-1]["content"], messages[:-1]
        prompt_tokens = len(self.lm.tokenizer(self.lm._render(messages, prefix))["input_ids"])
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            if k > self.max_logprobs:
                return 400, {
                    "error": {
                        "message": f"top_logprobs {k} exceeds the maximum ({self.max_logprobs})"
                    }
                }
            with self._model_lock:
                top = self.lm.first_token_logprobs([messages], assistant_prefix=prefix, top_k=k)[0]
            entries = sorted(top.items(), key=lambda kv: -kv[1])[:k]
            if body.get("logprob_token_ids"):
                wanted = {self.lm.tokenizer.decode([i]) for i in body["logprob_token_ids"]}
                with self._model_lock:
                    exact = self.lm.first_token_logprobs(
                        [messages],
                        assistant_prefix=prefix,
                        top_k=1,
                        candidates=DIGITS,
                    )[0]
                entries = [(t, v) for t, v in exact.items() if t in wanted] + entries[:1]
            token, value = entries[0] if entries else ("", -1.0)
            content = [
                {
                    "token": token,
                    "logprob": value,
                    "top_logprobs": [{"token": t, "logprob": v} for t, v in dict(entries).items()],
                }
            ]
            return 200, self._answer(token, "length", prompt_tokens, 1, {"content": content})
        with self._model_lock:
            gen = self.lm.generate(
                [messages],
                max_new_tokens=int(body.get("max_tokens") or 16),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                seed=int(body.get("seed") or 0),
            )[0]
        text = gen.text if self.reply is None else self.reply
        return 200, self._answer(
            text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens, None
        )

    def _answer(self, text, finish, prompt_tokens, completion_tokens, logprobs) -> dict:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": self.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- serving ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    model = {"id": server.served_name, "object": "model", "max_model_len": 2048}
                    self._send(200, {"object": "list", "data": [model]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/tokenize":
                    ids = server.lm.tokenizer(body["prompt"], add_special_tokens=False)
                    self._send(200, {"tokens": ids["input_ids"], "count": len(ids["input_ids"])})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(
                        {"body": body, "authorization": self.headers.get("Authorization")}
                    )
                fault = server._fault()
                if fault == "429":
                    self._send(
                        429,
                        {"error": {"message": "rate limited"}},
                        {"Retry-After": server.retry_after},
                    )
                    return
                if fault == "500":
                    self._send(500, {"error": {"message": "internal error"}})
                    return
                if fault == "timeout":
                    time.sleep(server.slow_s)
                status, payload = server.chat(body)
                if fault == "truncate":
                    data = json.dumps(payload).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if status == 200:
                    with server._lock:
                        server.answered += 1
                self._send(status, payload)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
