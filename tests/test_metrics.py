import pytest

from lpo_train.evaluation.metrics import (
    bootstrap_ci,
    corpus_bleu,
    distinct_n,
    majority_at_n,
    ngram_repeat_rate,
    percent_non_greedy,
    rouge_l,
    self_bleu,
    win_rate,
)


def test_win_rate_with_the_paper_tie_rule():
    assert win_rate([1, 0, 1, 0], [0, 0, 1, 1]) == pytest.approx(100 * (1 + 0.5 + 0.5 + 0) / 4)
    assert win_rate([0.9, 0.2], [0.1, 0.3]) == 50.0
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1], [1, 2])


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_data():
    method, base = [1, 1, 0, 1, 0.5] * 20, [0, 1, 0, 0, 0.5] * 20
    low, high = bootstrap_ci(method, base, n_boot=500, seed=1)
    point = win_rate(method, base)
    assert low <= point <= high and high - low < 25
    wide = bootstrap_ci(method[:10], base[:10], n_boot=500, seed=1)
    assert wide[1] - wide[0] > high - low
    assert bootstrap_ci([1] * 10, [0] * 10, n_boot=50) == (100.0, 100.0)


def test_majority_at_n():
    answers = [["3", "4", "3"], ["5", "6", "6"], ["1", "2", None], [None, None, None]]
    assert majority_at_n(answers, ["3", "5", "1", "7"]) == pytest.approx(100 * 2 / 4)  # tie -> earliest ("1")


def test_repeat_rate_non_greedy_and_distinct():
    assert ngram_repeat_rate(["a b c a b c", "x y z"]) == pytest.approx(100 * (0.25 + 0) / 2)
    assert percent_non_greedy([[0.0, 0.4], [0.0, 0.0, 1.0]]) == pytest.approx(40.0)
    assert percent_non_greedy([]) == 0.0
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0


def test_self_bleu_rouge_and_bleu_against_their_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    same = ["the cat sat on the mat today"] * 3
    assert self_bleu(same) == pytest.approx(100.0)
    varied = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn every day"]
    assert self_bleu(varied) < 20
    expected = sum(sacrebleu.sentence_bleu(t, [o for o in varied if o != t]).score for t in varied) / 3
    assert self_bleu(varied) == pytest.approx(expected)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(
        scorer.score("the cat sat down", "the cat sat")["rougeL"].fmeasure)
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="two texts"):
        self_bleu(["one"])

