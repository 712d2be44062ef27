"""A client for OpenAI-compatible chat servers: vLLM, SGLang, TGI, llama.cpp and hosted APIs.

`ChatEndpoint` sends requests to one server: a process-wide limit of requests in flight per
base URL, a timeout per request, and retries with exponential backoff on 408/429/5xx, on dropped
connections and on truncated bodies, waiting what a `Retry-After` header asks for. A server that
does not answer at all, or that does not serve the configured model, is named in one clear error
before any work is sent. Optional extensions (`chat_template_kwargs`, vLLM's
`continue_final_message` and `logprob_token_ids`) are dropped, once per endpoint, when a server
rejects them.

`OpenAILM` implements the two calls the pipeline needs (`generate`, `first_token_logprobs`) on
top of it, like the local backends in `resources.lm_backends` (all answer in
`resources.lm_types`).

API keys come from environment variables only; they are sent in the Authorization header and
never logged, stored or put in an error message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import requests

from auf_assets.core.seeding import stable_seed
from resources.lm_types import (
    Conversation,
    Generation,
    Progress,
    Usage,
    collapse_by_text,
    whole_characters,
)

log = logging.getLogger(__name__)

# Statuses worth asking again: the request itself was fine, the server was not.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Request fields that only some servers accept; a 400 that names one drops it for the endpoint.
EXTENSION_FIELDS = (
    "chat_template_kwargs",
    "logprob_token_ids",
    "continue_final_message",
    "add_generation_prompt",
)

_SEMAPHORES: dict[str, threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


class ApiError(RuntimeError):
    """A request to an OpenAI-compatible server that could not be completed."""


class EndpointUnreachable(ApiError):
    """No server answers at the configured base URL."""


class ModelNotServed(ApiError):
    """The server answers but does not serve the configured model name."""


class RequestRejected(ApiError):
    """The server refused the request itself (4xx other than 408/409/425/429): not retried."""

    def __init__(self, message: str, status: int, body: str):
        super().__init__(message)
        self.status = status
        self.body = body


class RetriesExhausted(ApiError):
    """Every attempt of a request failed with a transient error."""


def _semaphore(base_url: str, limit: int) -> threading.BoundedSemaphore:
    # One limit per endpoint in the process, however many resources or members point at it.
    with _SEMAPHORES_LOCK:
        sem = _SEMAPHORES.get(base_url)
        if sem is None or getattr(sem, "_auf_limit", None) != limit:
            sem = threading.BoundedSemaphore(limit)
            sem._auf_limit = limit  # type: ignore[attr-defined]
            _SEMAPHORES[base_url] = sem
        return sem


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return _excerpt(body)
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return _excerpt(str(err.get("message") or err))
    return _excerpt(str(err))


@dataclass
class ChatEndpoint:
    """One OpenAI-compatible server (`base_url` ends in /v1) and how to talk to it."""

    base_url: str
    api_key: str = ""
    max_concurrency: int = 8
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 120.0
    unsupported: set[str] = field(default_factory=set)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        self._session = requests.Session()
        self._checked: dict[str, dict] = {}
        self._lock = threading.Lock()

    # -- raw requests -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        base = self.backoff_s * (2**attempt)
        return min(base * (0.5 + random.random() / 2), self.max_wait_s)

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        usage: Usage | None = None,
        retries: int | None = None,
    ) -> dict:
        """One call with retries; the decoded JSON answer."""
        retries = self.max_retries if retries is None else retries
        url = f"{self.base_url}/{path.lstrip('/')}"
        sem = _semaphore(self.base_url, self.max_concurrency)
        last: str = ""
        connect_failures = 0
        for attempt in range(retries + 1):
            retry_after = None
            try:
                with sem:
                    resp = self._session.request(
                        method,
                        url,
                        json=body,
                        headers=self._headers(),
                        timeout=(self.connect_timeout_s, self.timeout_s),
                    )
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        last = f"a truncated or invalid JSON answer ({len(resp.content)} bytes)"
                elif resp.status_code in RETRY_STATUSES:
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    last = f"HTTP {resp.status_code}: {_error_message(resp.text)}"
                else:
                    raise self._rejection(resp, body)
            except requests.exceptions.ConnectionError as exc:
                # A refused or dropped connection, or a body cut short (IncompleteRead).
                connect_failures += isinstance(exc, requests.exceptions.ConnectTimeout) or (
                    "refused" in str(exc).lower() or "failed to establish" in str(exc).lower()
                )
                last = f"connection failed ({type(exc).__name__}: {_excerpt(str(exc), 160)})"
            except requests.exceptions.Timeout:
                last = f"no answer within {self.timeout_s:g} s"
            except requests.exceptions.ChunkedEncodingError as exc:
                last = f"the answer was cut off ({_excerpt(str(exc), 160)})"
            if usage is not None:
                usage.add(failures=1)
            if attempt == retries:
                break
            wait = self._wait(attempt, retry_after)
            if usage is not None:
                usage.add(retries=1)
            log.warning(
                "%s %s: %s; retry %d of %d in %.1f s",
                method,
                url,
                last,
                attempt + 1,
                retries,
                wait,
            )
            self.sleep(wait)
        if connect_failures == retries + 1:
            raise EndpointUnreachable(
                f"no OpenAI-compatible server answers at {self.base_url} ({last}); start the "
                "server or fix base_url"
            )
        raise RetriesExhausted(f"{method} {url} failed {retries + 1} times; last: {last}")

    def _rejection(self, resp: requests.Response, body: dict | None) -> ApiError:
        message = _error_message(resp.text)
        model = (body or {}).get("model")
        if resp.status_code in (401, 403):
            return RequestRejected(
                f"{self.base_url} refused the credentials (HTTP {resp.status_code}: {message}); "
                "check the API key's environment variable",
                resp.status_code,
                resp.text,
            )
        if resp.status_code == 404 and model and "model" in message.lower():
            return ModelNotServed(
                f"{self.base_url} does not serve model {model!r}: {message}" + self._served_hint()
            )
        return RequestRejected(
            f"{self.base_url} rejected the request (HTTP {resp.status_code}): {message}",
            resp.status_code,
            resp.text,
        )

    def _served_hint(self) -> str:
        try:
            names = [m["id"] for m in self.models()]
        except (ApiError, KeyError, TypeError):
            return ""
        return f" (it serves {', '.join(names[:10])})" if names else ""

    # -- what a server offers -----------------------------------------------------------------

    def models(self) -> list[dict]:
        return list(self.request("GET", "models", retries=min(self.max_retries, 1)).get("data", []))

    def check_model(self, model: str) -> dict:
        """Fail early and clearly when the server is down or does not serve `model`.

        Returns what /models says of it (vLLM adds `max_model_len`); servers without a
        /models route are taken on trust.
        """
        with self._lock:
            if model in self._checked:
                return self._checked[model]
            try:
                served = self.models()
            except RequestRejected as exc:
                if exc.status in (401, 403):
                    raise
                served = []  # no /models route: the first real request will tell
            except RetriesExhausted as exc:
                log.warning("could not list the models of %s (%s)", self.base_url, exc)
                served = []
            info: dict = {}
            if served:
                ids = [str(m.get("id")) for m in served]
                if model not in ids:
                    raise ModelNotServed(
                        f"{self.base_url} does not serve model {model!r}; it serves "
                        f"{', '.join(ids[:10])}"
                    )
                info = next(m for m in served if m.get("id") == model)
            self._checked[model] = info
            return info

    def chat(self, body: dict, usage: Usage | None = None) -> dict:
        """POST /chat/completions, leaving out extension fields the server rejected before."""
        body = {k: v for k, v in body.items() if k not in self.unsupported}
        try:
            return self.request("POST", "chat/completions", body, usage)
        except RequestRejected as exc:
            if exc.status not in (400, 422):
                raise
            named = [f for f in EXTENSION_FIELDS if f in body and f in exc.body]
            if not named:
                raise
            with self._lock:
                self.unsupported.update(named)
            log.warning(
                "%s does not accept %s; sending requests without it",
                self.base_url,
                ", ".join(named),
            )
            return self.chat(body, usage)

    def token_ids(self, model: str, text: str) -> list[int] | None:
        """Token ids of `text` from vLLM's /tokenize (None where a server has no such route)."""
        if "tokenize" in self.unsupported:
            return None
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        try:
            resp = self._session.post(
                f"{root}/tokenize",
                json={"model": model, "prompt": text, "add_special_tokens": False},
                headers=self._headers(),
                timeout=(self.connect_timeout_s, self.timeout_s),
            )
            if resp.status_code != 200:
                raise ValueError(resp.status_code)
            return [int(t) for t in resp.json()["tokens"]]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            self.unsupported.add("tokenize")
            return None


# -- the language-model calls -------------------------------------------------------------------


class OpenAILM:
    """`generate` and `first_token_logprobs` through an OpenAI-compatible server."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        endpoint: ChatEndpoint,
        *,
        enable_thinking: bool = False,
        max_logprobs: int = 20,
    ):
        self.source = model
        self.endpoint = endpoint
        self.enable_thinking = enable_thinking
        self.max_logprobs = max_logprobs
        self.usage = Usage()
        self.info = endpoint.check_model(model)
        self._candidate_ids: dict[tuple[str, ...], list[int] | None] = {}

    @property
    def context_length(self) -> int | None:
        value = self.info.get("max_model_len")
        return int(value) if isinstance(value, int) and value > 0 else None

    def _body(self, conversation: Conversation, **extra) -> dict:
        body = {"model": self.source, "messages": list(conversation), **extra}
        # Reasoning models (Qwen3 and the like) would otherwise start with <think>.
        body["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return body

    def _run(self, calls: Sequence[Callable[[], object]], progress: Progress | None) -> list:
        """Run the calls with the endpoint's concurrency, in input order; first error raised.

        On an error the calls not yet sent are dropped and those in flight are waited for (their
        answers are cached); on an interrupt (Ctrl-C, a run terminated) nothing is waited for."""
        results: list = [None] * len(calls)
        done = 0
        workers = max(1, min(self.endpoint.max_concurrency, len(calls)))
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = {pool.submit(call): i for i, call in enumerate(calls)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += 1
                if progress:
                    progress(done, len(calls))
        except Exception:
            # Requests already sent are paid for: wait for them, so their answers reach the
            # call cache and a re-run asks only for what is missing; the rest is not sent.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:  # an interrupt: stop at once, in-flight requests end by themselves
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return results

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        batch_size: int = 0,
        progress: Progress | None = None,
    ) -> list[Generation]:
        def one(conversation: Conversation) -> Generation:
            body = self._body(
                conversation,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=stable_seed(seed, json.dumps(conversation, sort_keys=True)),
            )
            answer = self.endpoint.chat(body, self.usage)
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            gen = Generation(
                text=whole_characters(choice.get("message", {}).get("content") or ""),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            )
            self.usage.add(
                requests=1,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens,
            )
            return gen

        return self._run([lambda c=c: one(c) for c in conversations], progress)

    def candidate_token_ids(self, candidates: Sequence[str]) -> list[int] | None:
        """Ids of the single tokens spelling a candidate (bare or after a space), via /tokenize."""
        key = tuple(candidates)
        if key not in self._candidate_ids:
            ids: set[int] = set()
            for text in candidates:
                for spelling in (text, f" {text}"):
                    tokens = self.endpoint.token_ids(self.source, spelling)
                    if tokens is None:
                        self._candidate_ids[key] = None
                        return None
                    if len(tokens) == 1:
                        ids.add(tokens[0])
            self._candidate_ids[key] = sorted(ids) or None
        return self._candidate_ids[key]

    def first_token_logprobs(
        self,
        conversations: Sequence[Conversation],
        *,
        assistant_prefix: str = "",
        top_k: int = 20,
        candidates: Sequence[str] = (),
        batch_size: int = 0,
        progress: Progress | None = None,
    ) -> list[dict[str, float]]:
        """Each conversation's first-token log-probs: the top-k, and the candidates exactly where
        the server can say (vLLM >= 0.33 `logprob_token_ids`). A request the server rejects (a
        prompt longer than its context) gives an empty result; all of them rejected is an error.
        """
        k = min(top_k, self.max_logprobs)
        if k < top_k:
            log.warning("top_k %d is above max_logprobs %d: asking for %d", top_k, k, k)
        ids = self.candidate_token_ids(candidates) if candidates else None
        extra: dict = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": k}
        if ids:
            extra["logprob_token_ids"] = ids
        rejected: list[RequestRejected] = []

        def one(conversation: Conversation) -> dict[str, float]:
            messages = list(conversation)
            body_extra = dict(extra)
            if assistant_prefix:
                messages.append({"role": "assistant", "content": assistant_prefix})
                body_extra |= {"continue_final_message": True, "add_generation_prompt": False}
            try:
                answer = self.endpoint.chat(self._body(messages, **body_extra), self.usage)
            except RequestRejected as exc:
                rejected.append(exc)
                return {}
            usage = answer.get("usage") or {}
            self.usage.add(
                requests=1,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            content = ((answer["choices"][0].get("logprobs") or {}).get("content")) or []
            if not content:
                return {}
            first = content[0]
            entries = first.get("top_logprobs") or [first]
            return collapse_by_text(
                [(str(e.get("token", "")), float(e.get("logprob", -math.inf))) for e in entries]
            )

        results = self._run([lambda c=c: one(c) for c in conversations], progress)
        if rejected and len(rejected) == len(conversations):
            raise rejected[0]
        if rejected:
            log.warning(
                "%d of %d first-token requests were rejected, e.g. %s",
                len(rejected),
                len(conversations),
                rejected[0],
            )
        return results
