"""Example HTTP services for jobs whose program or scorer is a service (spec.task.http, the Webhook scorer): TEST
DOUBLES of a user's RAG pipeline and scoring webhook, not products.

- ``toy_rag``: a retrieval-augmented "program" over a fixed corpus of product facts. It retrieves the document whose
  words best match the rendered prompt, and answers from it in the format the prompt asks for, so its answer quality
  depends on the prompt: without the question in the prompt it finds nothing; by default it answers in a sentence
  ("According to the Battery page, the answer is Fourteen."); a prompt that asks for a single word (or only the
  answer) gets the bare word, and one that asks for lowercase gets it in lowercase. The cues are those of the
  simulated LLM's world (promptopt.simulated_llm.world), so the simulated reflection model can learn to fix the
  prompt from the scorer's feedback.
- ``webhook_scorer``: scores an output against expectations.expected_response: 1 for exactly the expected answer,
  0.5 when the output contains it but says more or writes it in another case, 0 otherwise, each with a rationale that
  says why.

Both speak promptopt.service_contract (v1) and refuse what breaks it with a 400, as a strict service would. They ship
in the product, like the simulated LLM, so that examples/http-rag.yaml can run them from the worker image
(``python -m promptopt.example_services rag|scorer --host 0.0.0.0 --port 8080``); they import only the standard
library and the contract (and pydantic, which it is written in).
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from promptopt.service_contract import (
    ContractError,
    ProgramAnswer,
    ProgramRequest,
    ScoreAnswer,
    ScoreRequest,
    ServiceUsage,
)
from promptopt.simulated_llm import world

# The corpus: (page title, text, the one-word answer its question expects).
CORPUS = (
    ("Battery", "The Aurora X2 headphones battery lasts fourteen hours on one charge.", "fourteen"),
    ("Charging", "A full charge of the Aurora X2 takes two hours with the bundled USB-C cable.", "two"),
    ("Colours", "The Aurora X2 comes in one colour only: graphite.", "graphite"),
    ("Weight", "The Aurora X2 weighs two hundred grams; its case is made of aluminium.", "aluminium"),
    ("Pairing", "To pair the Aurora X2, hold the crown button until the light blinks blue.", "blue"),
    ("Warranty", "The Aurora X2 warranty covers three years from the date of purchase.", "three"),
    ("Water", "The Aurora X2 resists rain and sweat; its rating is IPX4, not for swimming.", "ipx4"),
    ("Codecs", "Besides SBC and AAC, the Aurora X2 streams the LDAC codec for high resolution audio.", "ldac"),
)
# Questions whose answers are in the corpus, for datasets of examples and tests: (question, expected answer).
QUESTIONS = (
    ("How many hours does the Aurora X2 battery last on one charge?", "fourteen"),
    ("How many hours does a full charge of the Aurora X2 take?", "two"),
    ("Which colour does the Aurora X2 come in?", "graphite"),
    ("What is the case of the Aurora X2 made of?", "aluminium"),
    ("Which colour does the light blink when you pair the Aurora X2?", "blue"),
    ("How many years does the Aurora X2 warranty cover?", "three"),
    ("What water resistance rating does the Aurora X2 have?", "ipx4"),
    ("Which high resolution codec does the Aurora X2 stream besides SBC and AAC?", "ldac"),
)
NOT_FOUND = "I could not find that in the documentation."
_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset(
    "a an and the of to is in on for its it with which what how many does do you x2 aurora "
    "one only not from this that be by as at or".split()
)


def _content_words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in _STOP_WORDS}


def retrieve(query: str) -> tuple[str, str, str] | None:
    """The corpus page sharing the most content words with `query` (None when none shares any)."""
    words = _content_words(query)
    overlap, page = max(
        ((len(words & _content_words(text)), (title, text, answer)) for title, text, answer in CORPUS),
        key=lambda scored: scored[0],
    )
    return page if overlap else None


def rag_answer(prompt: str) -> str:
    """The toy RAG's output for a rendered prompt (all its messages' text)."""
    page = retrieve(prompt)
    if page is None:
        return NOT_FOUND
    title, _, answer = page
    word = answer if not world.missing(world.RULE_LOWERCASE, prompt) else answer.capitalize()
    if not world.missing(world.RULE_SINGLE_WORD, prompt):
        return word
    return f"According to the {title} page, the answer is {word}."


def rag_service(request: ProgramRequest) -> ProgramAnswer:
    prompt = "\n".join(message.content for message in request.messages)
    output = rag_answer(prompt)
    # Tokens as a model behind it would count them, roughly: one per four characters.
    usage = ServiceUsage(prompt_tokens=len(prompt) // 4 + 1, completion_tokens=len(output) // 4 + 1)
    return ProgramAnswer(output=output, usage=usage)


def webhook_score(request: ScoreRequest) -> ScoreAnswer:
    """The scorer's verdict on one output (see the module docstring)."""
    expected = request.expectations.get("expected_response")
    if not isinstance(expected, str):
        return ScoreAnswer(score=0.0, rationale="the record has no expectations.expected_response to compare with")
    output = request.outputs.strip()
    if output == expected.strip():
        return ScoreAnswer(score=1.0, rationale=f"the output is exactly the expected answer {expected!r}")
    if f" {expected.strip().lower()} " in f" {world.normalize(output)} ":
        return ScoreAnswer(
            score=0.5,
            rationale=f"the output contains the expected answer {expected!r} but is not exactly it: {output[:120]!r}",
        )
    return ScoreAnswer(
        score=0.0, rationale=f"the output {output[:120]!r} does not give the expected answer {expected!r}"
    )


class JsonService:
    """One POST endpoint on a ThreadingHTTPServer: `path` answers `handle(body)` as JSON; a ContractError is a 400
    naming what is wrong. With `required_headers`, a request lacking one of them gets a 401. For tests: `latency_s`
    before each answer, `inject` error answers, and what it served (`counts`, `received`, `most_in_flight`).
    Thread-safe; a context manager. Port 0 picks a free port."""

    def __init__(
        self,
        path: str,
        handle: Callable[[Any], Mapping[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        required_headers: Mapping[str, str] | None = None,
        latency_s: float = 0.0,
    ):
        self.path, self.host, self.port = path, host, port
        self._handle = handle
        self.required_headers = dict(required_headers or {})
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._counts = {"answered": 0, "refused": 0, "unauthorized": 0, "injected": 0}
        self._faults: list[int] = []
        self._received: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._in_flight = self._most_in_flight = 0
        self._server: ThreadingHTTPServer | None = None

    def inject(self, status: int, times: int = 1) -> None:
        """Answer the next `times` requests with this HTTP error status instead."""
        with self._lock:
            self._faults += [status] * times

    @property
    def received(self) -> list[dict[str, Any]]:
        """The last 1,000 requests: their headers and JSON bodies."""
        with self._lock:
            return list(self._received)

    @property
    def most_in_flight(self) -> int:
        """The most requests it was answering at once."""
        with self._lock:
            return self._most_in_flight

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the service is not started")
        return f"http://{self.host}:{self._server.server_port}{self.path}"

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def start(self) -> JsonService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the worker's client pools connections
            timeout = 60

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                self._send(
                    200 if self.path == "/health" else 404,
                    {"status": "ok"}
                    if self.path == "/health"
                    else {"error": f"no such path {self.path}; POST {service.path}"},
                )

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with service._lock:
                    service._in_flight += 1
                    service._most_in_flight = max(service._most_in_flight, service._in_flight)
                try:
                    self._answer(raw)
                finally:
                    with service._lock:
                        service._in_flight -= 1

            def _answer(self, raw: bytes) -> None:
                with service._lock:
                    fault = service._faults.pop(0) if service._faults else None
                    try:
                        service._received.append({"headers": dict(self.headers), "body": json.loads(raw or b"null")})
                    except ValueError:
                        service._received.append({"headers": dict(self.headers), "body": raw.decode(errors="replace")})
                time.sleep(service.latency_s)
                if fault is not None:
                    service._count("injected")
                    self._send(fault, {"error": f"injected HTTP {fault}"})
                elif self.path != service.path:
                    self._send(404, {"error": f"no such path {self.path}; POST {service.path}"})
                elif any(self.headers.get(name) != value for name, value in service.required_headers.items()):
                    service._count("unauthorized")
                    self._send(401, {"error": "missing or wrong credentials"})
                else:
                    try:
                        answer = service._handle(json.loads(raw or b"null"))
                    except (ContractError, ValueError) as error:
                        service._count("refused")
                        self._send(400, {"error": str(error)})
                        return
                    service._count("answered")
                    self._send(200, answer)

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"service{self.path}"
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> JsonService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1


def toy_rag(**options: Any) -> JsonService:
    """The toy RAG at POST /answer."""
    return JsonService("/answer", lambda body: rag_service(ProgramRequest.from_json(body)).to_json(), **options)


def webhook_scorer(**options: Any) -> JsonService:
    """The webhook scorer at POST /score."""
    return JsonService("/score", lambda body: webhook_score(ScoreRequest.from_json(body)).to_json(), **options)


__all__ = [
    "CORPUS",
    "NOT_FOUND",
    "QUESTIONS",
    "JsonService",
    "rag_answer",
    "retrieve",
    "toy_rag",
    "webhook_score",
    "webhook_scorer",
]
