"""MLflow's prompt optimization (the reference users know) on a benchmark's data, budget and models.

Run by bench/optimization.py (the simulated LLM) and bench/real_model.py (real models behind a loopback endpoint) in
a child process, possibly under another interpreter that has mlflow:

    python bench/mlflow_peer.py CONFIG.json RESULT.json

Protocol: prints ``absent`` (and writes {"available": false, ...}) when mlflow cannot be imported; otherwise
sets up (tracking store, prompt registration, one warm-up call) and prints ``ready``, waits for one stdin
line, runs `mlflow.genai.optimize_prompts` with `GepaPromptOptimizer` under the clock, writes RESULT.json.

Like-for-like with promptopt's run: the task is the prompt formatted with the record's inputs, sent as one
user message to the same task model with the same parameters (config "task_parameters"); the scorers (config
"scorers") are an exact match and, for the simulated LLM, a Correctness judge that sends the worker's own judge
request (the simulated judge does not read MLflow's built-in judge prompt); MLflow's default aggregation is their
mean, as ours; evaluation threads = the same concurrency (MLFLOW_GENAI_EVAL_MAX_WORKERS); tracking stays on, as in
MLflow's own job service.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# The worker's judge request, from this source tree: promptopt.prompt_contract imports only the standard library, so
# an interpreter that has mlflow but not promptopt's dependencies imports it too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from promptopt.prompt_contract import CORRECTNESS_QUESTION, JudgeRequest, judge_messages  # noqa: E402


def main(config_path: str, result_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    base_url, models = config["base_url"], config["models"]
    os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = str(config["concurrency"])
    # gepa's reflection LM is a litellm model string: litellm's OpenAI provider reads these.
    os.environ["OPENAI_API_BASE"] = base_url
    os.environ["OPENAI_API_KEY"] = "sk-simulated"
    try:
        import litellm
        import mlflow
        from mlflow.entities import Feedback
        from mlflow.genai.optimize import GepaPromptOptimizer
        from mlflow.genai.scorers import scorer
    except ImportError as error:
        Path(result_path).write_text(json.dumps({"available": False, "reason": f"mlflow is not installed ({error})"}))
        print("absent", flush=True)
        return 0

    workdir = Path(config["workdir"])
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("promptopt-bench")
    prompt = mlflow.genai.register_prompt(name=config["prompt_name"], template=config["template"])

    def complete(model: str, messages: list[dict[str, str]], **parameters: object) -> str:
        response = litellm.completion(
            model=f"openai/{model}",
            api_base=base_url,
            api_key="sk-simulated",
            messages=messages,
            **{"temperature": 0, **parameters},
        )
        return response.choices[0].message.content

    def predict_fn(review: str) -> str:
        return complete(
            models["task"], [{"role": "user", "content": prompt.format(review=review)}], **config["task_parameters"]
        )

    @scorer(name="ExactMatch")
    def exact_match(outputs: str, expectations: dict) -> Feedback:
        expected = str(expectations["expected_response"])
        if outputs.strip().casefold() == expected.strip().casefold():
            return Feedback(value=1.0, rationale=f"output equals expected {expected!r}")
        return Feedback(value=0.0, rationale=f"output {outputs!r} does not equal expected {expected!r}")

    @scorer(name="Correctness")
    def correctness(inputs: dict, outputs: str, expectations: dict) -> Feedback:
        judged = JudgeRequest(inputs, outputs, expected_response=str(expectations["expected_response"]))
        answer = json.loads(complete(models["judge"], judge_messages(CORRECTNESS_QUESTION, judged)))
        return Feedback(value=1.0 if answer["result"] == "yes" else 0.0, rationale=answer.get("rationale", ""))

    train_data = [{"inputs": r["inputs"], "expectations": r["expectations"]} for r in config["records"]]
    scorers = {"ExactMatch": exact_match, "Correctness": correctness}
    optimizer = GepaPromptOptimizer(
        reflection_model=f"openai:/{models['reflect']}",
        max_metric_calls=config["max_metric_calls"],
        gepa_kwargs=config["gepa_kwargs"],
    )
    predict_fn(train_data[0]["inputs"]["review"])  # warm-up: litellm's lazy imports, not counted

    print("ready", flush=True)
    sys.stdin.readline()
    sys.stdout = sys.stderr  # the parent reads no more of the pipe: what gepa prints goes to the log instead
    cpu_started, started = time.process_time(), time.perf_counter()
    result = mlflow.genai.optimize_prompts(
        predict_fn=predict_fn,
        train_data=train_data,
        prompt_uris=[prompt.uri],
        optimizer=optimizer,
        scorers=[scorers[name] for name in config["scorers"]],
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    Path(result_path).write_text(
        json.dumps(
            {
                "available": True,
                "version": mlflow.__version__,
                "wall_s": wall,
                "cpu_s": cpu,
                "initial_score": result.initial_eval_score,
                "final_score": result.final_eval_score,
                "best_template": result.optimized_prompts[0].template,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
