"""The simulated world: sentiment classification where a better instruction truly scores higher, the rules that
make an instruction better, and what its judge counts as correct. Pure functions of text.

The task model's answer to a prompt (:func:`classify`): the sentiment is the majority of lexicon words in the prompt
(POSITIVE_WORDS against NEGATIVE_WORDS; a tie is negative). A sarcasm marker (SARCASM_MARKERS: "yeah right",
"oh great", "just what i needed", "as if", "/s") flips it, but only if the prompt mentions sarcasm ("sarcas").
Format: if the prompt asks for a single word ("single word", "one word", "only the label") the answer is the bare
label, else "The sentiment of this text is <Label>."; the label is lowercase if the prompt says "lowercase", else
Capitalized. So SEED_INSTRUCTION scores 0 on exact match against "positive"/"negative" and OPTIMAL_INSTRUCTION
(three rules) scores 100%. A prompt without any lexicon word gets ``"echo: " + prompt``.

The rules (no lexicon word in any of them): RULE_SINGLE_WORD, RULE_LOWERCASE, RULE_SARCASM, and
RULE_ONE_LOWERCASE_WORD (the single-word and lowercase rules as one line, for an example that shows both faults: a
sentence where a lowercase word was expected). A failing example gives evidence for the rule that fixes its cause
(:func:`example_rules`): a wrong label on an input with a sarcasm marker -> sarcasm; a sentence where one word was
expected -> single word (fused with lowercase when the label's case is wrong too); the right word in the wrong
case -> lowercase. A new rule becomes a line just before the first line holding a ``{{placeholder}}`` (before the
blank lines that precede it), or is appended if there is none; every existing placeholder is kept.
"""

from __future__ import annotations

import re
import string

POSITIVE_WORDS = frozenset(
    ["love", "great", "excellent", "wonderful", "amazing", "fantastic", "delightful", "enjoyed", "superb", "brilliant"]
)
NEGATIVE_WORDS = frozenset(
    ["hate", "terrible", "awful", "horrible", "worst", "boring", "disappointing", "broken", "useless", "dreadful"]
)
SARCASM_MARKERS = ("yeah right", "oh great", "just what i needed", "as if", "/s")
LABELS = ("positive", "negative")

SEED_INSTRUCTION = "Classify the sentiment of this review.\n\n{{review}}"
RULE_SINGLE_WORD = "Answer with a single word: only the label."
RULE_LOWERCASE = "Write the label in lowercase."
RULE_ONE_LOWERCASE_WORD = "Answer with only the label, written as one lowercase word."
RULE_SARCASM = "Watch for sarcasm: sarcastic praise means the opposite label."
OPTIMAL_INSTRUCTION = (
    "Classify the sentiment of this review.\n" + RULE_ONE_LOWERCASE_WORD + "\n" + RULE_SARCASM + "\n\n{{review}}"
)
# Why a reflection model adds each rule, in its own words.
RULE_REASONS = {
    RULE_ONE_LOWERCASE_WORD: (
        "the assistant wrote a sentence with a capitalized label where one lowercase word was expected"
    ),
    RULE_SINGLE_WORD: "the assistant wrote a sentence where a single word was expected",
    RULE_LOWERCASE: "the assistant wrote the right word in the wrong letter case",
    RULE_SARCASM: "the assistant took sarcastic inputs literally and gave the opposite label",
}

PLACEHOLDER_RE = re.compile(r"\{\{\s*[\w.\-]+\s*\}\}")
_SINGLE_WORD_RE = re.compile(r"\b(?:single|one)[\s-]word\b|\bonly the label\b", re.I)
_LOWERCASE_RE = re.compile(r"\blower[\s-]?case\b", re.I)
_SARCASM_MARKER_RE = re.compile(
    r"\byeah,?\s+right\b|\boh,?\s+great\b|\bjust what i needed\b|\bas if\b|(?<!\S)/s(?=$|[\s.,!?])", re.I
)
_WORD_RE = re.compile(r"[a-z]+")


def has_sarcasm_marker(text: str) -> bool:
    return _SARCASM_MARKER_RE.search(text) is not None


def _lexicon_counts(text: str) -> tuple[int, int]:
    words = _WORD_RE.findall(text.lower())
    return sum(w in POSITIVE_WORDS for w in words), sum(w in NEGATIVE_WORDS for w in words)


def flip(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def true_label(text: str) -> str | None:
    """The sentiment a perfectly instructed task model gives ``text`` (sarcasm applied), or None."""
    pos, neg = _lexicon_counts(text)
    if pos + neg == 0:
        return None
    label = "positive" if pos > neg else "negative"
    return flip(label) if has_sarcasm_marker(text) else label


def classify(prompt: str) -> str:
    """The task model's answer to a rendered prompt (see the module docstring)."""
    pos, neg = _lexicon_counts(prompt)
    if pos + neg == 0:
        return "echo: " + prompt
    label = "positive" if pos > neg else "negative"
    if "sarcas" in prompt.lower() and has_sarcasm_marker(prompt):
        label = flip(label)
    if not _LOWERCASE_RE.search(prompt):
        label = label.capitalize()
    if _SINGLE_WORD_RE.search(prompt):
        return label
    return f"The sentiment of this text is {label}."


def normalize(text: str) -> str:
    """Lowercase, punctuation as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# ---- rules and templates -------------------------------------------------------------------


def missing(rule: str, template: str) -> bool:
    """Whether ``template`` lacks what ``rule`` asks for (by the same cues the task model reacts to)."""
    if rule == RULE_SINGLE_WORD:
        return not _SINGLE_WORD_RE.search(template)
    if rule == RULE_LOWERCASE:
        return not _LOWERCASE_RE.search(template)
    if rule == RULE_ONE_LOWERCASE_WORD:
        return not _SINGLE_WORD_RE.search(template) and not _LOWERCASE_RE.search(template)
    if rule == RULE_SARCASM:
        return "sarcas" not in template.lower()
    raise ValueError(rule)


def insert_rule(template: str, rule: str) -> str:
    lines = template.split("\n")
    for i, line in enumerate(lines):
        if PLACEHOLDER_RE.search(line):
            j = i
            while j > 0 and not lines[j - 1].strip():
                j -= 1
            lines.insert(j, rule)
            return "\n".join(lines)
    return template.rstrip("\n") + "\n" + rule if template.strip() else rule


def _output_label(output: str) -> str | None:
    words = set(_WORD_RE.findall(output.lower()))
    found = [label for label in LABELS if label in words]
    return found[0] if len(found) == 1 else None


def example_rules(inputs_text: str, output: str, expected: str | None, failing: bool) -> list[str]:
    """Rules one failing example gives evidence for, most important cause first."""
    if not failing or expected is None:
        return []
    out, exp = output.strip(), expected.strip()
    exp_label = normalize(exp) if normalize(exp) in LABELS else None
    if exp_label is not None and _output_label(out) != exp_label:
        # Wrong label: only sarcasm explains it in this world.
        return [RULE_SARCASM] if has_sarcasm_marker(inputs_text) else []
    rules = []
    if len(exp.split()) == 1 and len(out.split()) > 1:
        rules.append(RULE_SINGLE_WORD)
        # The expected word appears in the sentence but in another case.
        exp_word = normalize(exp)
        tokens = re.findall(r"[A-Za-z0-9]+", out)
        if exp == exp.lower() and any(t.lower() == exp_word and t != exp_word for t in tokens):
            rules.append(RULE_LOWERCASE)
    elif out != exp and out.lower() == exp.lower() and exp == exp.lower():
        rules.append(RULE_LOWERCASE)
    return rules


def rules_to_add(evidence: list[list[str]], template: str, first_only: bool) -> list[str]:
    """Missing rules in priority order (format, lowercase, sarcasm); the fused format rule if one example needs both."""
    found = {r for rules in evidence for r in rules}
    fused = any(RULE_SINGLE_WORD in rules and RULE_LOWERCASE in rules for rules in evidence)
    ordered: list[str] = []
    if fused and missing(RULE_ONE_LOWERCASE_WORD, template):
        ordered.append(RULE_ONE_LOWERCASE_WORD)
    else:
        for rule in (RULE_SINGLE_WORD, RULE_LOWERCASE):
            if rule in found and missing(rule, template):
                ordered.append(rule)
    if RULE_SARCASM in found and missing(RULE_SARCASM, template):
        ordered.append(RULE_SARCASM)
    return ordered[:1] if first_only else ordered


def guideline_rules(guidelines: str) -> list[str]:
    """The rules that free-text guidelines ask for."""
    rules = []
    if _SINGLE_WORD_RE.search(guidelines):
        rules.append(RULE_SINGLE_WORD)
    if _LOWERCASE_RE.search(guidelines):
        rules.append(RULE_LOWERCASE)
    if "sarcas" in guidelines.lower():
        rules.append(RULE_SARCASM)
    return rules


# ---- what the judge counts as correct ------------------------------------------------------

_JUDGE_SINGLE_WORD_RE = re.compile(r"\b(?:single|one)[\s-]word\b", re.I)
_NO_PUNCTUATION_RE = re.compile(r"\b(?:no|without)\s+punctuation\b", re.I)


def _contains_phrase(haystack_norm: str, needle_norm: str) -> bool:
    return bool(needle_norm) and f" {needle_norm} " in f" {haystack_norm} "


def correctness_failure(response: str, expected: str) -> str | None:
    """Why ``response`` does not give the expected response, or None: the expected response, normalized, must
    appear as a whole word sequence in the normalized response and, for a label, the other label must not."""
    response_norm, expected_norm = normalize(response), normalize(expected)
    if not _contains_phrase(response_norm, expected_norm):
        return f"The response does not contain the expected response {expected!r}."
    if expected_norm in LABELS and _contains_phrase(response_norm, flip(expected_norm)):
        return f"The response also names the other label {flip(expected_norm)!r}."
    return None


def guideline_checks(guideline: str, response: str) -> list[tuple[str, bool, str]]:
    """(check, passed, why not) for each check that a guideline asks for: "lowercase" (no uppercase letter),
    "single word"/"one word" (one whitespace-separated word), "no punctuation"/"without punctuation" (no ASCII
    punctuation). An unrecognized guideline asks for none."""
    checks = []
    if _LOWERCASE_RE.search(guideline):
        checks.append(("lowercase", response == response.lower(), "it has uppercase letters"))
    if _JUDGE_SINGLE_WORD_RE.search(guideline):
        checks.append(("single word", len(response.split()) == 1, f"it has {len(response.split())} words"))
    if _NO_PUNCTUATION_RE.search(guideline):
        checks.append(("no punctuation", not any(c in string.punctuation for c in response), "it has punctuation"))
    return checks


# ---- what the judge counts as relevant and as safe ------------------------------------------------

UNSAFE_WORDS = frozenset(["idiot", "stupid", "moron", "kill", "hate you"])
_DECLINES = ("i could not find", "i cannot answer", "i can't answer", "i don't know", "i do not know")


def relevance_failure(response: str) -> str | None:
    """Why ``response`` does not address its request, or None: it is empty, echoes the prompt back (the task model's
    answer to a prompt it cannot classify), or declines to answer."""
    text = response.strip().lower()
    if not text:
        return "The response is empty."
    if text.startswith("echo:"):
        return "The response repeats the request instead of answering it."
    if text.startswith(_DECLINES):
        return f"The response declines to answer: {response.strip()[:80]!r}."
    return None


def safety_failure(response: str) -> str | None:
    """Why ``response`` is unsafe, or None: it holds one of UNSAFE_WORDS."""
    found = [word for word in sorted(UNSAFE_WORDS) if re.search(rf"\b{word}\b", response.lower())]
    return f"The response holds offensive language: {', '.join(repr(w) for w in found)}." if found else None
