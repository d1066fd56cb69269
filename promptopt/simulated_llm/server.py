"""The simulated LLM's HTTP server: OpenAI's chat completions API over the simulated models, with fault injection,
latency, and counters of every request.

HTTP API (non-streaming OpenAI chat completions): ``POST /v1/chat/completions`` and ``POST /chat/completions``;
``GET /v1/models`` (and ``/models``); ``GET /health`` (no auth). ``stream: true`` gets a 400. Answers carry ``id``,
``model``, ``choices[0].message.content``, ``finish_reason`` ("stop", or "length" when ``max_tokens`` /
``max_completion_tokens`` cut the answer) and ``usage`` with a deterministic token estimate (``ceil(words * 4 /
3)``, see :func:`estimate_tokens`). litellm reaches it as model ``openai/<name>`` with ``api_base=<base_url>`` and
any api_key (the configured one if set).

Errors use OpenAI's body ``{"error": {"message", "type", "code"}}``: a wrong or missing bearer token when
``api_key`` is set -> 401 ``invalid_api_key`` (the received key is never echoed), an unknown model -> 404
``model_not_found``, a request breaking its contract -> 400 saying what is wrong. Faults can be injected
(:meth:`SimulatedLLM.inject`, :meth:`SimulatedLLM.inject_timeout`), latency configured globally or per model, and
every request is counted and logged (:attr:`SimulatedLLM.calls`, ``requests``, ...).

After :meth:`SimulatedLLM.garble_judge_answers` (fraction), that share of judge requests gets GARBLED_JUDGE_ANSWER
instead, prose with no JSON in it. Which requests is decided by a hash of their messages: the same request always
gets the same answer, and a judge asked again (a longer conversation) draws anew.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any

from promptopt.simulated_llm.models import (
    JUDGE_MODEL,
    KINDS,
    KNOWN_MODELS,
    TASK_MODEL,
    SimulatedLLMError,
    answer,
    message_text,
)

GARBLED_JUDGE_ANSWER = "Honestly, the response seems reasonable to me, more or less."


def estimate_tokens(text: str) -> int:
    """Deterministic token estimate: ceil(whitespace-separated words * 4 / 3)."""
    return (4 * len(text.split()) + 2) // 3


def _draw(messages: list[dict[str, Any]]) -> float:
    """A number in [0, 1) fixed by the messages: the same request draws the same, another one anew."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_STATUS_ERRORS = {
    400: ("Bad request (simulated fault)", "invalid_request_error", None),
    429: ("Rate limit reached for requests (simulated fault)", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (simulated fault)", "server_error", None),
    502: ("Bad gateway (simulated fault)", "server_error", None),
    503: ("The engine is currently overloaded (simulated fault)", "server_error", "service_unavailable"),
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server_version = "SimulatedLLM/1.0"
    # Keep-alive, as OpenAI-compatible servers do: with HTTP/1.0 every call paid a TCP connect and close in the
    # client, CPU that a real endpoint does not cost it. An idle connection is closed after a minute.
    protocol_version = "HTTP/1.1"
    timeout = 60
    # Headers and body leave in two writes: without TCP_NODELAY the body waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    sim: SimulatedLLM  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.sim.verbose:
            sys.stderr.write("simulated-llm: " + (format % args) + "\n")

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, OSError):
            self.close_connection = True  # the client gave up (e.g. after an injected timeout)

    def _authorized(self) -> bool:
        key = self.sim.api_key
        if key is None:
            return True
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :].strip() == key

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path in ("/v1/models", "/models"):
            if not self._authorized():
                self._send(401, SimulatedLLM.AUTH_ERROR)
                return
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "promptopt-simulated"} for m in KNOWN_MODELS]
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, SimulatedLLMError(404, f"Unknown path {path}").body())

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, SimulatedLLMError(404, f"Unknown path {path}").body())
            return
        status, body, headers = self.sim._handle_chat(raw, self._authorized())
        if status is None:  # stopping: no answer, and no further request on this connection
            self.close_connection = True
        else:
            self._send(status, body, headers)


class SimulatedLLM:
    """A deterministic OpenAI-compatible TEST DOUBLE serving the simulated models over HTTP.

    ``SimulatedLLM(api_key=None, latency_s=0.0, host="127.0.0.1", port=0, log_size=1000,
    verbose=False)``; a context manager (``start``/``stop``). ``port=0`` picks a free port.
    All methods are thread-safe.
    """

    AUTH_ERROR = {
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
    }

    def __init__(
        self,
        api_key: str | None = None,
        latency_s: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_size: int = 1000,
        verbose: bool = False,
    ):
        self.api_key = api_key
        self.host = host
        self.port = port
        self.verbose = verbose
        self._initial_latency = float(latency_s)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=log_size)
        self._init_state()

    def _init_state(self) -> None:
        self._latency = self._initial_latency
        self._model_latency: dict[str, float] = {}
        self._faults: list[dict[str, Any]] = []
        self._garbled_fraction = 0.0
        self._garbled = 0
        self._seq = 0
        self._first_request_at: float | None = None  # Unix time, comparable across processes
        self._calls = {k: 0 for k in KINDS}
        self._calls_by_model: dict[str, int] = {}
        self._errors: dict[int, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._log.clear()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> SimulatedLLM:
        if self._server is not None:
            return self
        self._stopping.clear()
        handler = type("SimulatedLLMHandler", (_Handler,), {"sim": self})
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="simulated-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes requests sleeping in latency / injected timeouts
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> SimulatedLLM:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` (the server must be started)."""
        if self._server is None:
            raise RuntimeError("SimulatedLLM is not started")
        return f"http://{self.host}:{self._server.server_port}/v1"

    def litellm_kwargs(self, model: str = TASK_MODEL) -> dict[str, Any]:
        """Keyword arguments for ``litellm.completion`` reaching ``model`` on this server."""
        return {"model": f"openai/{model}", "api_base": self.base_url, "api_key": self.api_key or "sk-simulated"}

    # ---- configuration and fault injection ---------------------------------------------

    def set_latency(self, seconds: float, model: str | None = None) -> None:
        """Fixed delay before every answer: globally, or for one model (overrides the global one)."""
        with self._lock:
            if model is None:
                self._latency = float(seconds)
            else:
                self._model_latency[model] = float(seconds)

    def inject(self, status: int, times: int = 1, *, model: str | None = None, retry_after: int = 0) -> None:
        """The next ``times`` chat requests (to ``model`` if given) get HTTP ``status``.

        The body is an OpenAI-style error; 429 carries ``Retry-After: <retry_after>`` (seconds) and
        ``retry-after-ms`` (10 when retry_after is 0, so SDK retries are immediate).
        Faults queue in order with :meth:`inject_timeout`.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._faults.append({"kind": "status", "status": int(status), "times": int(times), "model": model,
                                 "retry_after": int(retry_after)})  # fmt: skip

    def inject_timeout(self, times: int = 1, seconds: float = 5.0, *, model: str | None = None) -> None:
        """The next ``times`` chat requests (to ``model`` if given) hang ``seconds`` before answering normally."""
        with self._lock:
            self._faults.append({"kind": "timeout", "seconds": float(seconds), "times": int(times), "model": model})

    def garble_judge_answers(self, fraction: float) -> None:
        """From now on, about ``fraction`` of judge requests get GARBLED_JUDGE_ANSWER (no JSON verdict) instead of
        the judge's answer; which ones is a pure function of each request's messages. 0 turns it off."""
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        with self._lock:
            self._garbled_fraction = float(fraction)

    @property
    def garbled_answers(self) -> int:
        """Judge answers garbled so far."""
        with self._lock:
            return self._garbled

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f["times"] for f in self._faults)

    def reset(self) -> None:
        """Clear counters, the request log, pending faults and latency settings (back to the constructor's)."""
        with self._lock:
            self._init_state()

    # ---- observability ------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """Successful (200) calls per kind: task, reflection, metaprompt, judge."""
        with self._lock:
            return dict(self._calls)

    @property
    def calls_by_model(self) -> dict[str, int]:
        """Successful (200) calls per model name."""
        with self._lock:
            return dict(self._calls_by_model)

    @property
    def errors(self) -> dict[int, int]:
        """Error answers per HTTP status (401, 404, injected faults, contract 400s...)."""
        with self._lock:
            return dict(self._errors)

    @property
    def request_count(self) -> int:
        """Every chat-completion request received, whatever its answer."""
        with self._lock:
            return self._seq

    @property
    def tokens(self) -> dict[str, int]:
        """Token usage summed over successful answers."""
        with self._lock:
            return {
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "total_tokens": self._prompt_tokens + self._completion_tokens,
            }

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recent chat requests, oldest first: seq, model, kind, status, messages, prompt, response,
        prompt_tokens, completion_tokens, fault, elapsed_s. Credentials are never recorded."""
        with self._lock:
            return copy.deepcopy(list(self._log))

    def last_request(self, kind: str | None = None, model: str | None = None) -> dict[str, Any] | None:
        """The most recent logged request matching ``kind`` / ``model``, or None."""
        with self._lock:
            for rec in reversed(self._log):
                if (kind is None or rec["kind"] == kind) and (model is None or rec["model"] == model):
                    return copy.deepcopy(rec)
        return None

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter, and when the first chat request since the start or reset arrived (Unix
        time, None before it)."""
        with self._lock:
            first_request_at = self._first_request_at
        return {
            "first_request_at": first_request_at,
            "requests": self.request_count,
            "calls": self.calls,
            "calls_by_model": self.calls_by_model,
            "errors": self.errors,
            "tokens": self.tokens,
        }

    # ---- request handling (called from server threads) ---------------------------------

    def _take_fault(self, model: str | None) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["model"] is None or fault["model"] == model:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _finish(self, rec: dict[str, Any], status: int, response: str, started: float) -> None:
        rec["status"] = status
        rec["response"] = response
        rec["elapsed_s"] = round(time.monotonic() - started, 4)
        with self._lock:
            if status == 200:
                self._calls[rec["kind"]] = self._calls.get(rec["kind"], 0) + 1
                self._calls_by_model[rec["model"]] = self._calls_by_model.get(rec["model"], 0) + 1
                self._prompt_tokens += rec["prompt_tokens"]
                self._completion_tokens += rec["completion_tokens"]
            else:
                self._errors[status] = self._errors.get(status, 0) + 1
            self._log.append(rec)

    def _handle_chat(self, raw: bytes, authorized: bool) -> tuple[int | None, dict[str, Any], dict[str, str] | None]:
        started = time.monotonic()
        with self._lock:
            self._seq += 1
            seq = self._seq
            if self._first_request_at is None:
                self._first_request_at = time.time()
        rec: dict[str, Any] = {"seq": seq, "model": None, "kind": None, "messages": [], "prompt": "",
                               "prompt_tokens": 0, "completion_tokens": 0, "fault": None}  # fmt: skip

        def fail(err: SimulatedLLMError, headers: dict[str, str] | None = None):
            self._finish(rec, err.status, err.message, started)
            return err.status, err.body(), headers

        try:
            req = json.loads(raw or b"null")
        except ValueError:
            return fail(SimulatedLLMError(400, "The request body is not valid JSON"))
        if not isinstance(req, dict):
            return fail(SimulatedLLMError(400, "The request body must be a JSON object"))
        model = req.get("model")
        messages = req.get("messages")
        rec["model"] = model if isinstance(model, str) else None
        if isinstance(messages, list):
            rec["messages"] = [
                {"role": m.get("role"), "content": message_text(m.get("content"))}
                for m in messages
                if isinstance(m, dict)
            ]
            rec["prompt"] = "\n".join(m["content"] for m in rec["messages"])

        with self._lock:
            delay = self._model_latency.get(model, self._latency) if isinstance(model, str) else self._latency
        if delay > 0 and self._stopping.wait(delay):
            return None, {}, None

        if not authorized:
            err = SimulatedLLMError(401, "Incorrect API key provided", code="invalid_api_key")
            return fail(err)

        with self._lock:
            fault = self._take_fault(rec["model"])
        if fault is not None and fault["kind"] == "timeout":
            rec["fault"] = "timeout"
            if self._stopping.wait(fault["seconds"]):
                return None, {}, None
        elif fault is not None:
            status = fault["status"]
            rec["fault"] = str(status)
            message, type_, code = _STATUS_ERRORS.get(status, (f"Simulated HTTP {status}", "server_error", None))
            headers = None
            if status == 429:  # like OpenAI, also in ms; the openai SDK ignores a 0 and backs off ~0.5 s
                ra = fault["retry_after"]
                headers = {"Retry-After": str(ra), "retry-after-ms": str(ra * 1000 if ra > 0 else 10)}
            return fail(SimulatedLLMError(status, message, type_, code), headers)

        if not isinstance(model, str) or not isinstance(messages, list):
            return fail(SimulatedLLMError(400, "The request needs 'model' (string) and 'messages' (array)"))
        if req.get("stream"):
            msg = "stream=true is not supported by the simulated LLM"
            return fail(SimulatedLLMError(400, msg, code="unsupported_parameter"))
        try:
            kind, content = answer(model, messages)
        except SimulatedLLMError as err:
            if err.status != 404:
                rec["kind"] = "task" if model == TASK_MODEL else "judge" if model == JUDGE_MODEL else None
            return fail(err)
        except Exception as exc:  # a bug in the double must surface, not hang the client
            msg = f"simulated LLM internal error: {exc!r}"
            return fail(SimulatedLLMError(500, msg, "server_error", "sim_internal_error"))

        with self._lock:
            garble = kind == "judge" and _draw(rec["messages"]) < self._garbled_fraction
            self._garbled += garble
        if garble:
            content, rec["fault"] = GARBLED_JUDGE_ANSWER, "garbled"
        finish_reason = "stop"
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and estimate_tokens(content) > limit:
            keep = max(1, (limit * 3) // 4)
            ends = [m.end() for m in re.finditer(r"\S+", content)]
            content = content[: ends[keep - 1]] if keep <= len(ends) else content
            finish_reason = "length"
        prompt_tokens = estimate_tokens(rec["prompt"])
        completion_tokens = estimate_tokens(content)
        rec.update(kind=kind, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self._finish(rec, 200, content, started)
        body = {
            "id": f"chatcmpl-sim-{seq:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "simulated-llm",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, body, None


def serve_until_interrupted(stop: Callable[[], None], announce: Callable[[], None]) -> None:
    """Block a foreground server's main thread until ^C or SIGTERM, then `stop` it (the `python -m` entry points).
    SIGTERM needs a handler: as a container's PID 1 the process would ignore it and be killed only at the end of the
    Pod's grace period. `announce` says the server is ready (its URL) once the handler is in place: a SIGTERM sent as
    soon as the URL is read must find it."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    announce()
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
