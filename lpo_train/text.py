"""Generic text helpers shared by rewards, tasks and metrics (one place, not three)."""

from __future__ import annotations

import re


def completion_text(completion) -> str:
    """Plain text of a completion given as a string or as a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"A completion must be a string or a list of messages, got {type(completion)}.")


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def distinct_ngram_ratio(words: list[str], n: int = 3) -> float:
    """Unique n-grams / all n-grams (0.0 when the text has no n-gram)."""
    grams = ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text (0 when none)."""
    grams = ngrams(text.split(), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def answer_mentioned(text: str, answer: str) -> float:
    """1.0 if ``answer`` occurs in ``text`` as a whole word or phrase (case-insensitive), else 0.0."""
    return float(re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", text, re.IGNORECASE) is not None)


def long_non_repetitive(text: str, min_words: int = 40) -> float:
    """Share of non-repeated word 3-grams, scaled down for texts shorter than ``min_words``: a
    text-quality proxy for stories (it cannot see incoherence)."""
    words = text.split()
    return (1.0 - repetition_rate(text)) * min(1.0, len(words) / min_words) if words else 0.0
