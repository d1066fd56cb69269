"""The real-model benchmark's pure parts: reading the Rotten Tomatoes CSV, the balanced split, a GGUF file's
metadata, its table and its command line. Nothing here needs llama.cpp or a model: `python -m bench --only
real-model` is the way to run the benchmark itself (docs/performance.md)."""

import io
import struct

import pytest

from bench import real_model, report
from bench.__main__ import BENCHMARKS, parse_args

CSV = """category,text,movie_name,has_plot_and_reviews
plot,"A senior at an elite college must confront her past.",abandon,True
fresh,"A touching, small-scale   story
of family responsibility.",about_schmidt,True
rotten,"The oddest thing about the movie is how it affirms moldy values.",four_feathers,True
fresh,"A touching, small-scale story of family responsibility.",about_schmidt,True
rotten,"{long}",long_one,False
rotten,"  ",blank,False
"""


def test_review_snippets_keep_labelled_reviews_once_in_file_order():
    snippets = real_model.review_snippets(CSV.format(long="x" * (real_model.MAX_SNIPPET_CHARS + 1)))
    assert snippets == [
        {"review": "A touching, small-scale story of family responsibility.", "label": "fresh"},
        {"review": "The oddest thing about the movie is how it affirms moldy values.", "label": "rotten"},
    ]


def snippets(fresh: int, rotten: int) -> list[dict[str, str]]:
    return [{"review": f"good {n}", "label": "fresh"} for n in range(fresh)] + [
        {"review": f"bad {n}", "label": "rotten"} for n in range(rotten)
    ]


def labels(records: list[dict]) -> list[str]:
    return sorted(record["expectations"]["expected_response"] for record in records)


def test_balanced_split_is_disjoint_balanced_and_fixed_by_its_seed():
    train, test = real_model.balanced_split(snippets(40, 30), 24, 7, seed=0)
    assert labels(train) == ["fresh"] * 12 + ["rotten"] * 12
    assert labels(test) == ["fresh"] * 4 + ["rotten"] * 3  # an odd size: one more fresh
    reviews = [record["inputs"]["review"] for record in train + test]
    assert len(set(reviews)) == len(reviews)
    assert train[0] == {
        "inputs": {"review": train[0]["inputs"]["review"]},
        "expectations": {"expected_response": train[0]["expectations"]["expected_response"]},
    }
    assert real_model.balanced_split(snippets(40, 30), 24, 7, seed=0) == (train, test)
    assert real_model.balanced_split(snippets(40, 30), 24, 7, seed=1) != (train, test)


def test_balanced_split_refuses_sizes_the_snippets_cannot_fill():
    with pytest.raises(ValueError, match="9 rotten snippets, 10 wanted"):
        real_model.balanced_split(snippets(40, 9), 10, 10, seed=0)


def gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def test_gguf_metadata_reads_scalars_and_strings_and_skips_arrays():
    entries = [
        gguf_string("general.name") + struct.pack("<I", 8) + gguf_string("Qwen2.5 Coder 0.5B Instruct"),
        gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + gguf_string("a") + gguf_string("b"),
        gguf_string("general.file_type") + struct.pack("<II", 4, 15),
        gguf_string("qwen2.rope.freq_base") + struct.pack("<If", 6, 0.5),
    ]
    header = b"GGUF" + struct.pack("<IQQ", 3, 291, len(entries))
    metadata = real_model.gguf_metadata(io.BytesIO(header + b"".join(entries) + b"tensor data"))
    assert metadata == {
        "general.name": "Qwen2.5 Coder 0.5B Instruct",
        "general.file_type": 15,
        "qwen2.rope.freq_base": 0.5,
    }
    with pytest.raises(ValueError, match="not a GGUF file"):
        real_model.gguf_metadata(io.BytesIO(b"PK\x03\x04"))


def results() -> dict:
    usage = {"llm_calls": {"task": 150, "reflection": 4}, "tokens": {"prompt": 21034, "completion": 1890}}
    return {
        "config": {"train": 24, "test": 60, "metric_calls": 150},
        "llama_cpp_python": real_model.LLAMA_CPP_PYTHON,
        "models": {
            "task": {"served_as": "qwen2.5-coder-0.5b-instruct"},
            "reflection": {"served_as": "qwen2.5-coder-1.5b-instruct"},
        },
        "seed_template": "Is this movie review fresh or rotten?\n\nReview: {{review}}",
        "test_before": 0.0,
        "test_answers_before": {"fresh": 0, "rotten": 0, "other": 60},
        "runs": [
            {
                "system": "promptopt",
                "optimizer": "GEPA",
                "wall_s": 612.4,
                "validation_initial": 0.0,
                "validation_best": 0.5,
                "test_after": 0.4833,
                "test_answers": {"fresh": 59, "rotten": 0, "other": 1},
                **usage,
            },
            {"system": "MLflow", "optimizer": "GEPA", "error": "the MLflow peer failed (exit 1):\nTraceback ..."},
        ],
    }


def test_the_table_has_a_row_per_system_and_says_why_one_did_not_finish():
    table = report.real_model_table(results())
    assert table.title == (
        "Real model: Rotten Tomatoes snippets, 24 training (= validation) and 60 test records, "
        "GEPA max_metric_calls 150"
    )
    assert table.rows[0] == report.SystemRow(
        "promptopt", "GEPA", "0.00 → 0.48", "0.00 → 0.50", "612", "150 / 4", "21,034 + 1,890", "59 / 0 / 1"
    )
    assert table.rows[1] == report.SystemRow("MLflow", "GEPA", "0.00 → —", "—", "—", "—", "—", "—")
    assert "MLflow GEPA did not finish: the MLflow peer failed (exit 1):" in table.notes
    assert "qwen2.5-coder-0.5b-instruct" in table.notes[0] and "'Is this movie review" in table.notes[0]
    assert table.notes[0].endswith("its test answers fresh / rotten / other: 0 / 0 / 60")

    lines = report.render_systems(table).splitlines()
    assert lines[0] == f"### {table.title}"
    header = next(index for index, line in enumerate(lines) if line.startswith("| system"))
    assert set(lines[header + 1]) == {"|", "-"}
    assert lines[header + 2].startswith("| promptopt | GEPA      | 0.00 → 0.48 ")
    assert len({len(line) for line in lines[header:]}) == 1  # the columns line up


def test_real_model_runs_only_when_named_and_writes_its_own_file():
    assert "real-model" not in BENCHMARKS  # the run without --only
    args = parse_args(["--only", "real-model"])
    assert args.json.name == "real-model.json"
    assert (args.real_train, args.real_test, args.real_metric_calls) == (24, 60, 150)
    assert parse_args(["--only", "real-model", "--only", "optimization"]).json.name == "latest.json"
    quick = parse_args(["--only", "real-model", "--quick"])
    assert (quick.json.name, quick.real_train, quick.real_metric_calls) == ("quick.json", 6, 20)
