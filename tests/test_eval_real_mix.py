"""The real_mix reward of the SmolLM2 replication (f), on hand-made completions."""

import pytest

from lpo_train.rewards import resolve_reward
from lpo_train.text import answer_mentioned, long_non_repetitive


def test_answer_mentioned_whole_words_only():
    assert answer_mentioned("The capital of France is Paris.", "Paris") == 1.0
    assert answer_mentioned("a PARIS trip", "paris") == 1.0
    assert answer_mentioned("Parisian cafes", "Paris") == 0.0
    assert answer_mentioned("It is Buenos Aires!", "Buenos Aires") == 1.0


def test_long_non_repetitive():
    # 3-grams: abc bca cab abc -> 1 of 4 repeats; 6 words of the 40 needed -> (1 - 0.25) * 6 / 40
    assert long_non_repetitive("a b c a b c") == pytest.approx(0.75 * 6 / 40)
    assert long_non_repetitive(" ".join(str(i) for i in range(50))) == 1.0
    assert long_non_repetitive("") == 0.0


def test_real_mix_dispatches_by_family():
    fn = resolve_reward("real_mix")
    story = " ".join(f"w{i}" for i in range(40))
    out = fn(None, ["So 3 + 4 = 7.", "I think it is Rome", story, "3 + 4 = 8"],
             family=["arith", "capital", "story", "arith"], answer=["7", "Rome", "", "7"])
    assert out == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no reward for family"):
        fn(None, ["x"], family=["poem"], answer=[""])
