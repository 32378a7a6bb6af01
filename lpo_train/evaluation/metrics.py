"""Evaluation metrics as pure functions (each unit-tested on hand-made cases)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

from lpo_train.text import ngrams, repetition_rate


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def is_valid(score) -> bool:
    """A score that a reward produced (NaN: no reward function scored the sample, e.g. they all returned None);
    a tuple of scores (compared lexicographically) is valid when each part is."""
    if isinstance(score, (tuple, list)):
        return all(map(is_valid, score))
    return score == score  # NaN is the one value unequal to itself


def valid_mean(values: Sequence[float]) -> float:
    """Mean of the valid (non-NaN) values; NaN when there is none."""
    valid = [v for v in values if is_valid(v)]
    return sum(valid) / len(valid) if valid else math.nan


def _valid_pairs(method: Sequence[float], baseline: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(method) != len(baseline) or not method:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists ({len(method)} vs {len(baseline)}).")
    pairs = [(m, b) for m, b in zip(method, baseline) if is_valid(m) and is_valid(b)]
    return [m for m, _ in pairs], [b for _, b in pairs]


def win_rate(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Per-item win rate (percent) of ``method`` over ``baseline``: 1 for a higher score, 0.5
    each on ties (the paper's rule), 0 for a lower one. An item either side has no valid score for
    (NaN) is invalid and left out, never a loss for both; NaN when no item is valid."""
    method, baseline = _valid_pairs(method, baseline)
    if not method:
        return math.nan
    return 100.0 * mean([1.0 if m > b else 0.5 if m == b else 0.0 for m, b in zip(method, baseline)])


def num_invalid(method: Sequence[float], baseline: Sequence[float]) -> int:
    """Items that ``win_rate`` leaves out: either side's score is NaN."""
    return sum(not (is_valid(m) and is_valid(b)) for m, b in zip(method, baseline, strict=True))


def bootstrap_ci(method: Sequence[float], baseline: Sequence[float], metric: Callable = win_rate,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(method, baseline)``, resampling the valid
    items (both scores non-NaN); ``(nan, nan)`` when there is none."""
    method, baseline = _valid_pairs(method, baseline)
    if not method:
        return math.nan, math.nan
    rng, n = random.Random(seed), len(method)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(metric([method[i] for i in idx], [baseline[i] for i in idx]))
    stats.sort()
    return stats[int(alpha / 2 * n_boot)], stats[min(n_boot - 1, int((1 - alpha / 2) * n_boot))]


def paired_win_rate(method: Sequence[float], baseline: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"win_rate", "ci95", "num_invalid"}`` of ``method`` against ``baseline`` (per-item scores);
    None for a rate or interval that no valid item supports."""
    rate, (low, high) = win_rate(method, baseline), bootstrap_ci(method, baseline, n_boot=n_boot, seed=seed)
    finite = lambda v: v if is_valid(v) else None  # noqa: E731  (results.json holds no NaN)
    return {"win_rate": finite(rate), "ci95": [finite(low), finite(high)], "num_invalid": num_invalid(method, baseline)}


def majority_at_n(answers: Sequence[Sequence[str]], gold: Sequence[str]) -> float:
    """maj@N accuracy (percent): the most frequent answer of each item's N samples (ties: the
    earliest of the most frequent) against the gold answer; None answers never win a vote."""
    correct = 0
    for votes, truth in zip(answers, gold, strict=True):
        counts = Counter(a for a in votes if a is not None)
        if counts:
            top = max(counts.values())
            winner = next(a for a in votes if a is not None and counts[a] == top)
            correct += winner == truth
    return 100.0 * correct / len(gold)


def ngram_repeat_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean share of word n-grams that repeat an earlier n-gram of the same text (percent)."""
    return 100.0 * mean([repetition_rate(t, n) for t in texts])


def percent_non_greedy(values: Sequence[Sequence[float]]) -> float:
    """Share of decoding steps (all sequences together) whose temperature was > 0 (percent)."""
    steps = [v for seq in values for v in seq]
    return 100.0 * sum(v > 0 for v in steps) / len(steps) if steps else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` together (0 when there is none)."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against the others: lower = more diverse."""
    import sacrebleu

    if len(texts) < 2:
        raise ValueError("Self-BLEU needs at least two texts.")
    return mean([sacrebleu.sentence_bleu(t, [o for j, o in enumerate(texts) if j != i]).score
                 for i, t in enumerate(texts)])


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, stemmed), 0-1."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)])


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """SacreBLEU corpus score (0-100) with one reference per prediction."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
