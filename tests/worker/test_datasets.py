"""Dataset records from the spec or a ConfigMap's text (JSON, JSONL, CSV), and the train/validation split."""

import json

import pytest

from promptopt.api.v1alpha1 import DatasetConfigMapKeyRef, DatasetSpec
from promptopt_worker.datasets import DatasetError, dataset_format, load_dataset, parse_records, split_examples
from promptopt_worker.problem import Example
from promptopt_worker.problem import InvalidInput

RECORDS = [
    {"inputs": {"review": "I love it"}, "expectations": {"expected_response": "positive"}},
    {"inputs": {"review": "Awful", "lang": "en"}, "expectations": {"expected_response": "negative", "guidelines": "x"}},
    {"inputs": {"review": "Meh"}},
]


def as_dicts(records):
    return [r.model_dump() for r in records]


def expected_dicts():
    return [{"inputs": r["inputs"], "expectations": r.get("expectations", {})} for r in RECORDS]


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [json.dumps(RECORDS), json.dumps({"records": RECORDS}, indent=2)])
def test_json_is_an_array_or_an_object_with_records(text):
    assert as_dicts(parse_records(text, "json")) == expected_dicts()


def test_jsonl_is_one_record_a_line_blank_lines_skipped():
    text = "\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n\n" + json.dumps(RECORDS[2]) + "\n"
    assert as_dicts(parse_records(text, "jsonl")) == expected_dicts()


def test_csv_columns_become_inputs_and_expectations():
    text = (
        "\ufeffreview,inputs.lang,expected_response,expectations.guidelines\n"
        "I love it,,positive,\n"
        '"Awful, truly",en,negative,be brief\n'
        "\n"
    )
    assert as_dicts(parse_records(text, "csv")) == [
        {"inputs": {"review": "I love it", "lang": ""}, "expectations": {"expected_response": "positive"}},
        {"inputs": {"review": "Awful, truly", "lang": "en"},
         "expectations": {"expected_response": "negative", "guidelines": "be brief"}},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "given", "expected"),
    [("data.json", None, "json"), ("data.JSONL", None, "jsonl"), ("rows.ndjson", None, "jsonl"),
     ("rows.csv", None, "csv"), ("rows.txt", "csv", "csv"), ("records", "jsonl", "jsonl")],
)  # fmt: skip
def test_the_format_comes_from_the_spec_or_the_keys_extension(key, given, expected):
    assert dataset_format(DatasetConfigMapKeyRef(name="data", key=key, format=given)) == expected


def test_an_unknown_extension_asks_for_the_format():
    with pytest.raises(DatasetError, match="set dataset.configMapKeyRef.format \\(json, jsonl, csv\\)"):
        dataset_format(DatasetConfigMapKeyRef(name="data", key="records.txt"))


# --- errors ----------------------------------------------------------------------------------


def test_json_syntax_errors_name_the_line():
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        parse_records('[\n{"inputs": }]', "json", source="ConfigMap 'data' key 'r.json'")


def test_json_of_the_wrong_shape_is_refused():
    with pytest.raises(DatasetError, match='expected a JSON array of records, or an object with a "records" array'):
        parse_records('{"rows": []}', "json")


def test_every_invalid_record_is_listed_with_its_place():
    text = json.dumps([RECORDS[0], {"expectations": {}}, {"inputs": "text"}, {"inputs": {}, "extra": 1}, 5])
    with pytest.raises(DatasetError) as caught:
        parse_records(text, "json", source="ConfigMap 'data' key 'r.json'")
    message = str(caught.value)
    assert message.startswith("cannot read the records of ConfigMap 'data' key 'r.json': ")
    assert "record 1: inputs: Field required" in message
    assert "record 2: inputs: Input should be a valid dictionary" in message
    assert "record 3: extra: Extra inputs are not permitted" in message
    assert "record 4: Input should be a valid dictionary" in message
    assert "record 0" not in message
    assert isinstance(caught.value, InvalidInput)


def test_jsonl_errors_name_the_line():
    text = json.dumps(RECORDS[0]) + "\n\nnot json\n" + json.dumps({"inputs": []}) + "\n"
    with pytest.raises(DatasetError) as caught:
        parse_records(text, "jsonl")
    assert "line 3: not valid JSON" in str(caught.value)
    assert "line 4: inputs: Input should be a valid dictionary" in str(caught.value)


def test_csv_rows_of_the_wrong_width_name_the_line():
    with pytest.raises(DatasetError, match="line 3: 3 cells, but the header has 2 columns"):
        parse_records("review,expected_response\ngood,positive\nbad,negative,extra\n", "csv")


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "line 1: the CSV has no header row"), ("review,\nx,y\n", "column 2: the header names no column"),
     ("review,inputs.review\nx,y\n", "two columns set inputs.review")],
)  # fmt: skip
def test_csv_headers_are_checked(text, problem):
    with pytest.raises(DatasetError, match=problem):
        parse_records(text, "csv")


def test_many_problems_are_counted_not_all_listed():
    text = "\n".join("oops" for _ in range(25))
    with pytest.raises(DatasetError, match="line 20: .*; and 5 more problems$"):
        parse_records(text, "jsonl")


# --- loading and splitting -------------------------------------------------------------------


def test_inline_records_become_examples_with_their_indexes():
    split = load_dataset(DatasetSpec(records=RECORDS))
    assert split.train == split.validation
    assert [(e.index, dict(e.inputs)) for e in split.train] == [(i, r["inputs"]) for i, r in enumerate(RECORDS)]


def test_configmap_text_is_parsed_in_its_format():
    spec = DatasetSpec(config_map_key_ref={"name": "data", "key": "records.jsonl"}, validation_fraction=0.5)
    split = load_dataset(spec, "\n".join(json.dumps(r) for r in RECORDS))
    assert sorted(e.index for e in split.train + split.validation) == [0, 1, 2]


def test_a_configmap_dataset_needs_its_text_and_records():
    spec = DatasetSpec(config_map_key_ref={"name": "data", "key": "records.json"})
    with pytest.raises(ValueError, match="pass the key's text"):
        load_dataset(spec)
    with pytest.raises(DatasetError, match="the dataset has no records"):
        load_dataset(spec, "[]")


def examples(n):
    return [Example(index=i, inputs={"i": i}, expectations={}) for i in range(n)]


def test_the_split_is_deterministic_disjoint_and_complete():
    first = split_examples(examples(20), 0.25, shuffle_seed=3)
    again = split_examples(examples(20), 0.25, shuffle_seed=3)
    other = split_examples(examples(20), 0.25, shuffle_seed=4)
    assert first == again
    assert len(first.validation) == 5 and len(first.train) == 15
    assert sorted(e.index for e in first.train + first.validation) == list(range(20))
    assert [e.index for e in first.validation] == sorted(e.index for e in first.validation)  # dataset order kept
    assert {e.index for e in other.validation} != {e.index for e in first.validation}


@pytest.mark.parametrize(("n", "fraction", "validation"), [(2, 0.1, 1), (2, 0.9, 1), (10, 0.01, 1), (10, 0.99, 9)])
def test_each_side_keeps_at_least_one_record(n, fraction, validation):
    split = split_examples(examples(n), fraction, shuffle_seed=0)
    assert (len(split.train), len(split.validation)) == (n - validation, validation)


def test_without_a_fraction_or_with_one_record_both_sides_hold_everything():
    assert split_examples(examples(4), None, 0).train == split_examples(examples(4), None, 0).validation == examples(4)
    assert split_examples(examples(1), 0.5, 0).validation == examples(1)


def records(n):
    return [{"inputs": {"i": i}, "expectations": {"expected_response": str(i)}} for i in range(n)]


def test_the_test_records_are_held_out_first_and_the_rest_split_as_without_them():
    split = load_dataset(DatasetSpec(records=records(20), test_fraction=0.2, validation_fraction=0.25, shuffle_seed=3))
    test, seen = {e.index for e in split.test}, {e.index for e in split.train + split.validation}
    assert len(test) == 4 and not test & seen and test | seen == set(range(20))
    assert (len(split.train), len(split.validation)) == (12, 4)  # 25% of the 16 left
    assert split == load_dataset(
        DatasetSpec(records=records(20), test_fraction=0.2, validation_fraction=0.25, shuffle_seed=3)
    )  # the same on every attempt


@pytest.mark.parametrize(("n", "fraction", "test"), [(3, 0.01, 1), (3, 0.9, 1), (10, 0.99, 8)])
def test_a_test_set_leaves_records_to_train_and_validate_on(n, fraction, test):
    split = load_dataset(DatasetSpec(records=records(n), test_fraction=fraction))
    assert len(split.test) == test and len(split.train) == len(split.validation) == n - test


def test_too_few_records_for_a_test_set_name_the_field():
    with pytest.raises(DatasetError, match=r"spec.dataset.testFraction: 2 records cannot make a test set"):
        load_dataset(DatasetSpec(records=records(2), test_fraction=0.5))
