import pytest

from lpo_train.tasks import toy
from lpo_train.tasks.toy import (
    arith_reward,
    arith_score,
    constrained_reward,
    constrained_score,
    distinct_ngram_ratio,
    is_grammatical,
    make_corpus,
    make_prompts,
    sentiment_reward,
    story_reward,
    story_score,
    toy_reward,
)

GOOD = "the big cat sees the dog in the forest."
STORY = ("the big cat sees the dog in the forest. the old fox finds the owl by the sea. "
         "the red king meets the girl at night. the wild bear helps the frog on the hill.")


def test_prompts_deterministic_and_seed_dependent():
    assert make_prompts(n_per_family=8, seed=3) == make_prompts(n_per_family=8, seed=3)
    assert make_prompts(n_per_family=8, seed=3) != make_prompts(n_per_family=8, seed=4)
    rows = make_prompts(n_per_family=5, seed=0)
    assert [r["family"] for r in rows[:4]] == list(toy.FAMILIES)
    assert len(rows) == 20
    arith = [r for r in rows if r["family"] == "arith"]
    for r in arith:
        a, b = r["prompt"][0]["content"].removeprefix("What is ").rstrip("?").split(" + ")
        assert int(r["answer"]) == int(a) + int(b)
    assert all(r["prompt"][0]["role"] == "user" for r in rows)


def test_corpus_deterministic_and_has_controlled_noise():
    assert make_corpus(50, seed=1) == make_corpus(50, seed=1)
    assert make_corpus(50, seed=1) != make_corpus(50, seed=2)
    docs = make_corpus(4000, seed=0, families=["arith"])
    right = 0
    for d in docs:
        a, b = d["messages"][0]["content"].removeprefix("What is ").rstrip("?").split(" + ")
        right += arith_score(d["messages"][1]["content"], str(int(a) + int(b)))
    assert abs(right / len(docs) - toy.ARITH_CORRECT_P) < 0.03  # calibrated doubt, as designed


def test_corpus_stories_are_grammatical_and_keep_the_constraint_at_the_set_rate():
    docs = make_corpus(1000, seed=0, families=["story", "constrained"])
    kept = total = 0
    for d in docs:
        text = d["messages"][1]["content"]
        if d["family"] == "story":
            assert story_score(text) > 0 and all(is_grammatical(s) for s in text.split(".") if s.strip())
        else:
            starter = d["messages"][0]["content"].split('"')[1]
            words = [s.split()[0] for s in text.split(".") if s.strip()]
            kept, total = kept + sum(w == starter for w in words), total + len(words)
    assert abs(kept / total - toy.CONSTRAINT_KEEP_P) < 0.04


@pytest.mark.parametrize("text,answer,expected", [
    ("The answer is 12.", "12", 1.0),
    ("The answer is 13.", "12", 0.0),
    ("12", "12", 1.0),
    ("The answer is 112.", "12", 0.0),
    ("", "3", 0.0),
    ("no number here ✓ 日本", "3", 0.0),
    ("The answer is 4, not 5.", "5", 0.0),  # only the first number counts
])
def test_arith_score(text, answer, expected):
    assert arith_score(text, answer) == expected


def test_story_score_hand_computed():
    assert story_score(STORY) == pytest.approx(1.0)
    repeated = " ".join([GOOD] * 4)
    words = repeated.replace(".", " ").split()  # 36 words, 34 trigrams, 9 distinct
    assert distinct_ngram_ratio(words) == pytest.approx(9 / 34)
    assert story_score(repeated) == pytest.approx(9 / 34)
    # two of four sentences broken: half grammatical, still all-distinct trigrams
    broken = STORY.replace("the old fox finds", "the old fox zorbs").replace("the wild bear", "wild the bear")
    assert story_score(broken) == pytest.approx(0.5 * distinct_ngram_ratio(broken.replace(".", " ").split()))
    assert story_score(GOOD) == pytest.approx(0.25)  # one good sentence of the four expected
    assert story_score("") == 0.0 and story_score("....") == 0.0
    assert story_score("日本語 🙂. ✓") == 0.0


def test_story_score_very_long_text_is_bounded():
    long = " ".join([STORY] * 200)
    assert 0.0 < story_score(long) < 0.05  # all grammatical but massively repetitive


def test_constrained_score_hand_computed():
    sents = STORY.split(". ")
    all_kept = ". ".join("then " + s for s in sents)
    assert constrained_score(all_kept, "then") == pytest.approx(0.7 + 0.3 * 1.0)
    two_kept = ". ".join(("then " if i < 2 else "soon ") + s for i, s in enumerate(sents))
    assert constrained_score(two_kept, "then") == pytest.approx(0.7 * 0.5 + 0.3 * 1.0)
    assert constrained_score("", "then") == 0.0
    assert constrained_score(STORY, "then") == pytest.approx(0.3 * story_score(
        ". ".join(s.split(" ", 1)[1] for s in sents)))


def test_sentiment_reward_is_vader_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["the film was great. i love the music.", "the meal was awful. i hate the price.", ""]
    scores = sentiment_reward(None, texts)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert scores[0] == SentimentIntensityAnalyzer().polarity_scores(texts[0])["compound"]
    for w in toy.POSITIVE + toy.LIKE:  # the lexicon covers every sentiment word of the world
        assert sentiment_reward(None, [w])[0] > 0, w
    for w in toy.NEGATIVE + toy.DISLIKE:
        assert sentiment_reward(None, [w])[0] < 0, w


def test_rewards_accept_trl_signature_and_conversational_completions():
    conv = [[{"role": "assistant", "content": "The answer is 7."}], "The answer is 8."]
    assert arith_reward(["p", "p"], conv, answer=["7", "7"], extra_column=[1, 2]) == [1.0, 0.0]
    assert story_reward(["p"], [[{"role": "assistant", "content": STORY}]]) == [pytest.approx(1.0)]
    assert constrained_reward(["p"], ["then " + GOOD], starter=["then"]) == [pytest.approx(0.7 / 4 + 0.3 * 0.25)]


def test_toy_reward_dispatches_by_family_and_stays_in_unit_interval():
    completions = ["The answer is 5.", STORY, "then " + GOOD, "the film was great."]
    out = toy_reward(None, completions, family=list(toy.FAMILIES), answer=["5", "", "", ""],
                     starter=["", "", "then", ""], topic=["", "", "", "film"])
    assert out[0] == 1.0 and out[1] == pytest.approx(1.0)
    assert out[2] == pytest.approx(constrained_score("then " + GOOD, "then"))
    assert out[3] == pytest.approx((sentiment_reward(None, [completions[3]])[0] + 1) / 2)
    assert all(0.0 <= x <= 1.0 for x in out)


def test_toy_reward_errors_are_clear():
    with pytest.raises(KeyError, match="answer"):
        toy_reward(None, ["1"], family=["arith"])
    with pytest.raises(ValueError, match="Unknown toy family"):
        toy_reward(None, ["x"], family=["poetry"], answer=[""], starter=[""])


@pytest.mark.parametrize("text,answer,expected", [
    ("3 + 4 = 7.", "7", 1.0), ("The sum of 3 and 4 is 7", "7", 1.0), ("3 + 4 = 8", "7", 0.0), ("", "7", 0.0),
    ("7, no wait, 8", "7", 0.0),
])
def test_arith_final_score_reads_the_last_number(text, answer, expected):
    assert toy.arith_final_score(text, answer) == expected
