"""A JSON merge patch as the API server applies one (RFC 7386)."""

from promptopt.api.merge_patch import apply_merge_patch


def test_merge_patch_merges_dicts_replaces_lists_and_removes_nulls():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    patch = {"a": {"b": None, "d": 3}, "l": [3], "x": None, "new": {"n": None, "m": 1}}
    assert apply_merge_patch(target, patch) == {"a": {"c": 2, "d": 3}, "l": [3], "new": {"m": 1}}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}  # untouched


def test_a_merge_patch_that_is_no_object_replaces_the_target():
    assert apply_merge_patch({"a": 1}, [1]) == [1]
    assert apply_merge_patch({"a": 1}, "x") == "x"
    assert apply_merge_patch("x", {"a": 1}) == {"a": 1}
