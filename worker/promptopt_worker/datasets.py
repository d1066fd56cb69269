"""Dataset records, inline in the spec or parsed from a ConfigMap's text, and the train/validation split.

Text formats: JSON (an array of records, or an object with a "records" array), JSONL (one record a line)
and CSV (a header row; columns named expected_response or expectations.<key> become expectations,
inputs.<key> and every other column become inputs). Every record is checked against the API's `Record`,
and all problems are reported at once, each naming its record or line.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import ValidationError

from promptopt.api.v1alpha1 import DatasetConfigMapKeyRef, DatasetSpec, Record
from promptopt_worker.problem import Example
from promptopt_worker.problem import InvalidInput

DatasetFormat = Literal["json", "jsonl", "csv"]
FORMAT_BY_EXTENSION: dict[str, DatasetFormat] = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MAX_PROBLEMS = 20  # listed in one error message; the rest are counted


class DatasetError(InvalidInput):
    """The dataset cannot be read: bad syntax, records not in the expected shape, or no records."""


@dataclass(frozen=True)
class Split:
    train: list[Example]
    validation: list[Example]
    test: list[Example] = field(default_factory=list)  # held out from the optimizer (dataset.testFraction)


def load_dataset(spec: DatasetSpec, text: str | None = None, rows: Sequence[Mapping[str, Any]] | None = None) -> Split:
    """The examples of the job's dataset, split; `text` is the ConfigMap key's value when the records come from a
    ConfigMap, `rows` the records of the MLflow evaluation dataset when they come from MLflow."""
    if spec.records is not None:
        records = spec.records
    elif spec.mlflow_dataset_id is not None:
        records = _validated(
            [(f"record {index}", row) for index, row in enumerate(rows or [])],
            f"MLflow dataset {spec.mlflow_dataset_id}",
        )
    elif text is None:
        raise ValueError("the dataset is in a ConfigMap: pass the key's text")
    else:
        ref = spec.config_map_key_ref
        assert ref is not None  # exactly one of records and configMapKeyRef (the model's rule)
        records = parse_records(text, dataset_format(ref), source=f"ConfigMap {ref.name!r} key {ref.key!r}")
    if not records:
        raise DatasetError("the dataset has no records")
    examples = [Example(index=i, inputs=r.inputs, expectations=r.expectations) for i, r in enumerate(records)]
    if spec.test_fraction is None:
        return split_examples(examples, spec.validation_fraction, spec.shuffle_seed)
    if len(examples) < 3:
        raise DatasetError(
            f"spec.dataset.testFraction: {len(examples)} records cannot make a test set and still "
            "train and validate: at least 3 are needed"
        )
    # The test set first: the optimizer sees only what is left, split into training and validation as without one.
    rest, test = _held_out(examples, spec.test_fraction, spec.shuffle_seed, keep=2)
    split = split_examples(rest, spec.validation_fraction, spec.shuffle_seed)
    return Split(train=split.train, validation=split.validation, test=test)


def dataset_format(ref: DatasetConfigMapKeyRef) -> DatasetFormat:
    """The format given in the spec, else the one the key's extension names."""
    if ref.format is not None:
        return ref.format
    extension = "." + ref.key.rsplit(".", 1)[-1].lower() if "." in ref.key else ""
    if extension not in FORMAT_BY_EXTENSION:
        raise DatasetError(
            f"cannot tell the format of ConfigMap {ref.name!r} key {ref.key!r} from its name: set "
            f"dataset.configMapKeyRef.format ({', '.join(get_args(DatasetFormat))})"
        )
    return FORMAT_BY_EXTENSION[extension]


def parse_records(text: str, fmt: DatasetFormat, *, source: str = "the dataset") -> list[Record]:
    """The records in `text`; a DatasetError lists every problem, each naming its record or line."""
    text = text.removeprefix("\ufeff")  # a byte-order mark left by spreadsheet exports
    return _validated({"json": _json_records, "jsonl": _jsonl_records, "csv": _csv_records}[fmt](text), source)


def _validated(located: Located, source: str) -> list[Record]:
    """The records, each checked by the API model; a DatasetError lists every problem, each naming its place."""
    records, problems = [], []
    for where, data in located:
        if isinstance(data, str):  # a problem found while reading
            problems.append(f"{where}: {data}")
            continue
        try:
            records.append(Record.model_validate(data))
        except ValidationError as error:
            problems.extend(f"{where}: {_describe(e)}" for e in error.errors())
    if problems:
        listed = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            listed.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
        raise DatasetError(f"cannot read the records of {source}: " + "; ".join(listed))
    return records


def split_examples(examples: Sequence[Example], validation_fraction: float | None, shuffle_seed: int) -> Split:
    """Hold out `validation_fraction` of the examples (a seeded shuffle, so the same split on every run and
    restart), at least one on each side; without a fraction, or with a single example, both sides hold all."""
    if validation_fraction is None or len(examples) < 2:
        return Split(train=list(examples), validation=list(examples))
    train, validation = _held_out(examples, validation_fraction, shuffle_seed, keep=1)
    return Split(train=train, validation=validation)


def _held_out(
    examples: Sequence[Example], fraction: float, shuffle_seed: int, keep: int
) -> tuple[list[Example], list[Example]]:
    """(the rest, `fraction` of the examples held out by a seeded shuffle): at least one held out, at least `keep`
    left, in their dataset order."""
    positions = list(range(len(examples)))
    random.Random(shuffle_seed).shuffle(positions)
    held = set(positions[: min(max(round(len(examples) * fraction), 1), len(examples) - keep)])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


# Readers yield (where, record data) or (where, problem text).
Located = list[tuple[str, Any]]


def _json_records(text: str) -> Located:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return [(f"line {error.lineno}", f"not valid JSON: {error.msg} (column {error.colno})")]
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        return [("the document", 'expected a JSON array of records, or an object with a "records" array')]
    return [(f"record {i}", record) for i, record in enumerate(data)]


def _jsonl_records(text: str) -> Located:
    located: Located = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            located.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            located.append((f"line {number}", f"not valid JSON: {error.msg} (column {error.colno})"))
    return located


def _csv_records(text: str) -> Located:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return [("line 1", "the CSV has no header row")]
    columns = [_csv_column(name.strip()) for name in header]
    problems = [(f"column {i + 1}", "the header names no column") for i, c in enumerate(columns) if not c[1]]
    problems += [
        ("header", f"two columns set {section}.{key}")
        for n, (section, key) in enumerate(columns)
        if key and (section, key) in columns[:n]
    ]
    if problems:
        return problems
    located: Located = []
    for row in reader:
        where = f"line {reader.line_num}"
        if not row:  # a blank line
            continue
        if len(row) != len(columns):
            located.append((where, f"{len(row)} cells, but the header has {len(columns)} columns"))
            continue
        record: dict[str, dict[str, str]] = {"inputs": {}, "expectations": {}}
        for (section, key), value in zip(columns, row, strict=True):
            # A CSV cannot leave a cell out: an empty expectation means the record has none.
            if value or section == "inputs":
                record[section][key] = value
        located.append((where, record))
    return located


def _csv_column(name: str) -> tuple[str, str]:
    """(section, key) a CSV column fills."""
    if name == "expected_response":
        return "expectations", name
    for section in ("expectations", "inputs"):
        if name.startswith(section + "."):
            return section, name[len(section) + 1 :]
    return "inputs", name


def _describe(error: Any) -> str:
    """One pydantic error as `field.path: message`."""
    path = ".".join(str(part) for part in error["loc"])
    return f"{path}: {error['msg']}" if path else error["msg"]
