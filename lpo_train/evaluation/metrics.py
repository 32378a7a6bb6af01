"""Evaluation metrics as pure functions (each unit-tested on hand-made cases)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

from lpo_train.text import ngrams, repetition_rate


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def win_rate(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Per-item win rate (percent) of ``method`` over ``baseline``: 1 for a higher score, 0.5
    each on ties (the paper's rule), 0 for a lower one."""
    if len(method) != len(baseline) or not method:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists ({len(method)} vs {len(baseline)}).")
    points = [1.0 if m > b else 0.5 if m == b else 0.0 for m, b in zip(method, baseline)]
    return 100.0 * mean(points)


def bootstrap_ci(method: Sequence[float], baseline: Sequence[float], metric: Callable = win_rate,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(method, baseline)``, resampling items."""
    rng, n = random.Random(seed), len(method)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(metric([method[i] for i in idx], [baseline[i] for i in idx]))
    stats.sort()
    return stats[int(alpha / 2 * n_boot)], stats[min(n_boot - 1, int((1 - alpha / 2) * n_boot))]


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
