"""The sample data of the simulated world: MLflow-format records whose truth is the world's own."""

from __future__ import annotations

import random
from typing import Any

_SUBJECTS = [
    "film", "phone", "novel", "hotel stay", "pair of headphones", "restaurant", "video game", "laptop",
    "concert", "coffee maker", "museum tour", "podcast",
]  # fmt: skip
_POS_ADJ = ["great", "excellent", "wonderful", "amazing", "fantastic", "delightful", "superb", "brilliant"]
_NEG_ADJ = ["terrible", "awful", "horrible", "boring", "disappointing", "broken", "useless", "dreadful"]
_POS_TEMPLATES = [
    "The {subject} was {adj}.",
    "I love this {subject}; the whole thing felt {adj}.",
    "What {a_adj} {subject}. I enjoyed every minute of it.",
    "Honestly {a_adj} {subject}, and the price was fair too.",
    "I enjoyed the {subject} a lot. {Adj} from start to finish.",
]
_NEG_TEMPLATES = [
    "The {subject} was {adj}.",
    "I hate this {subject}; it felt {adj}.",
    "What {a_adj} {subject}. I want my money back.",
    "The {subject} turned out {adj}, and support never replied.",
    "Truly the worst {subject} I have tried. {Adj} and slow.",
]
_SARCASTIC_TEMPLATES = [  # praise words plus a sarcasm marker, no negative word: the truth is negative
    "Oh great, the {subject} stopped working after one day.",
    "Yeah right, {a_adj} {subject}. It lasted ten minutes.",
    "Just what I needed: {a_adj} {subject} that never shows up on time.",
    "A truly {adj} {subject}, as if anyone could sit through three hours of that.",
    "Wow, {adj} {subject}, I just love waiting two weeks for a refund /s",
]


def sentiment_dataset(n: int = 20, seed: int = 0, sarcasm_ratio: float = 0.25) -> list[dict[str, Any]]:
    """``n`` deterministic MLflow-format records for the simulated sentiment world.

    Each record is ``{"inputs": {"review": str}, "expectations": {"expected_response":
    "positive"|"negative"}}``. ``round(n * sarcasm_ratio)`` reviews are sarcastic praise (expected
    "negative"); the rest are split evenly between plain positive and plain negative reviews.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    n_sarcastic = round(n * sarcasm_ratio)
    rest = n - n_sarcastic
    kinds = ["sarcastic"] * n_sarcastic + ["positive"] * ((rest + 1) // 2) + ["negative"] * (rest // 2)
    rng.shuffle(kinds)
    seen: set[str] = set()
    records = []
    for kind in kinds:
        templates, adjs, expected = {
            "positive": (_POS_TEMPLATES, _POS_ADJ, "positive"),
            "negative": (_NEG_TEMPLATES, _NEG_ADJ, "negative"),
            "sarcastic": (_SARCASTIC_TEMPLATES, _POS_ADJ, "negative"),
        }[kind]
        for _attempt in range(50):
            adj = rng.choice(adjs)
            a_adj = ("an " if adj[0] in "aeiou" else "a ") + adj
            review = rng.choice(templates).format(
                subject=rng.choice(_SUBJECTS), adj=adj, Adj=adj.capitalize(), a_adj=a_adj
            )
            if review not in seen:
                break
        seen.add(review)
        records.append({"inputs": {"review": review}, "expectations": {"expected_response": expected}})
    return records
