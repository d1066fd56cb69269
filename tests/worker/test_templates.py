"""Prompt templates filled with a record's inputs, and the up-front check of a dataset against the prompts."""

import pytest

from promptopt_worker.problem import Example, PromptTemplate
from promptopt_worker.problem import InvalidInput
from promptopt_worker.templates import TemplateError, check_inputs, messages, render


def example(index, **inputs):
    return Example(index=index, inputs=inputs, expectations={})


def test_render_fills_variables_with_whitespace_inside_the_braces():
    assert render("Review: {{review}} / {{ review }} / {{  title}}", {"review": "great", "title": "T"}, prompt="p") == (
        "Review: great / great / T"
    )


def test_render_writes_non_string_values_as_json():
    inputs = {"n": 3, "ok": True, "none": None, "tags": ["a", "é"], "meta": {"k": 1.5}}
    text = render("{{n}} {{ok}} {{none}} {{tags}} {{meta}}", inputs, prompt="p")
    assert text == '3 true null ["a", "é"] {"k": 1.5}'


def test_render_leaves_text_that_is_not_a_variable_alone():
    assert render("{{1abc}} {single} {{ two words }}", {}, prompt="p") == "{{1abc}} {single} {{ two words }}"


def test_a_missing_variable_names_the_prompt_the_record_and_the_variable():
    with pytest.raises(TemplateError) as caught:
        render("Classify: {{review}}", {"text": "x"}, prompt="classify", record=7)
    message = str(caught.value)
    assert "prompt 'classify'" in message and "record 7" in message and "'review'" in message
    assert "inputs: text" in message
    assert isinstance(caught.value, InvalidInput)


def test_messages_follow_the_prompt_list_with_the_candidates_texts():
    prompts = [PromptTemplate("system", "system", "Be brief."), PromptTemplate("ask", "user", "Q: {{question}}")]
    candidate = {"system": "Be very brief.", "ask": "Question: {{question}}"}
    assert messages(prompts, candidate, {"question": "why?"}) == [
        {"role": "system", "content": "Be very brief."},
        {"role": "user", "content": "Question: why?"},
    ]


def test_check_inputs_lists_every_problem_before_any_call():
    prompts = [PromptTemplate("a", "user", "{{review}} {{title}}"), PromptTemplate("b", "system", "{{lang}}")]
    examples = [example(0, review="r", title="t", lang="en"), example(1, title="t", lang="en"), example(2, lang="de"),
                example(3, review="r", title="t")]  # fmt: skip
    with pytest.raises(TemplateError) as caught:
        check_inputs(prompts, examples)
    message = str(caught.value)
    assert "prompt 'a' uses {{review}}, but records 1, 2 have no input 'review'" in message
    assert "prompt 'a' uses {{title}}, but record 2 has no input 'title'" in message
    assert "prompt 'b' uses {{lang}}, but record 3 has no input 'lang'" in message


def test_check_inputs_names_the_first_records_and_counts_the_rest():
    prompts = [PromptTemplate("a", "user", "{{review}}")]
    with pytest.raises(TemplateError, match=r"records 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 5 more have no input"):
        check_inputs(prompts, [example(i) for i in range(15)])


def test_check_inputs_accepts_fitting_records_and_extra_inputs():
    check_inputs([PromptTemplate("a", "user", "{{review}}")], [example(0, review="r", unused="u")])
