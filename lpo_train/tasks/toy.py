"""The toy world: a synthetic world where the temperature trade-offs of the papers are real.

Four task families, each a chat prompt with a reward in the TRL signature:

- ``arith``: "What is a + b?"; the pretraining corpus gives the right sum only 70 % of the
  time (else a near miss), so the LM has calibrated doubt: greedy is right, sampling errs.
- ``story``: four sentences from a grammar whose every slot has a heavy mode, so greedy
  repeats one sentence; very high temperatures amplify the LM's mistakes into ungrammatical
  text. Reward = grammatical fraction x distinct word-3-gram ratio.
- ``constrained``: a story whose every sentence must start with a given word; the corpus
  keeps the constraint 75 % of the time. Reward = 0.7 x constraint fraction + 0.3 x quality.
- ``sentiment``: a short review; gold reward = VADER compound score of the continuation.

Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lpo_train.text import completion_text, distinct_ngram_ratio  # noqa: F401 (re-exported)

NAME = "toy"  # the dataset, the reward and the model spec (toy_lm) of the toy world
FAMILIES = ("arith", "story", "constrained", "sentiment")

NOUNS = ["cat", "dog", "bird", "fox", "king", "girl", "boy", "wolf", "bear", "frog", "owl", "horse"]
ADJS = ["big", "small", "old", "young", "red", "quiet", "tall", "grey", "little", "wild"]
VERBS = ["sees", "finds", "follows", "meets", "helps", "chases", "watches", "calls"]
PLACES = ["in the forest", "near the river", "at the market", "on the hill",
          "by the sea", "under the tree", "in the town", "at night"]
STARTERS = ["then", "later", "soon", "still", "suddenly", "meanwhile", "again", "finally"]
ITEMS = ["film", "book", "game", "song", "meal", "hotel", "show", "phone"]
POSITIVE = ["great", "good", "wonderful", "nice", "fun", "excellent", "lovely"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "poor", "horrible", "dull"]
LIKE, DISLIKE = ["love", "like", "enjoy"], ["hate", "dislike"]
PARTS = ["story", "ending", "music", "price", "start", "style"]

STORY_SENTENCES = 4
ARITH_MAX = 9  # operands in 0..ARITH_MAX
ARITH_CORRECT_P = 0.7  # share of correct answers in the pretraining corpus
CONSTRAINT_KEEP_P = 0.75  # share of constrained sentences that keep the constraint
MODE_P = 0.45  # probability of each grammar slot's heavy mode

_SENTENCE_RE = re.compile(
    r"the (?P<adj>\w+) (?P<noun>\w+) (?P<verb>\w+) the (?P<obj>\w+) (?P<place>(?:\w+ )*\w+)"
)


def _heavy(rng: random.Random, words: list[str]) -> str:
    """The first word with probability MODE_P, else one of the others uniformly."""
    return words[0] if rng.random() < MODE_P else rng.choice(words[1:])


def _story_sentence(rng: random.Random, subject: str | None = None) -> str:
    noun = subject or _heavy(rng, NOUNS)
    return (f"the {_heavy(rng, ADJS)} {noun} {_heavy(rng, VERBS)} "
            f"the {_heavy(rng, NOUNS)} {_heavy(rng, PLACES)}.")


# --- prompts -------------------------------------------------------------------------------

def _prompt(rng: random.Random, family: str) -> dict:
    if family == "arith":
        a, b = rng.randint(0, ARITH_MAX), rng.randint(0, ARITH_MAX)
        return {"content": f"What is {a} + {b}?", "answer": str(a + b), "topic": "", "starter": ""}
    if family == "story":
        noun = rng.choice(NOUNS)
        return {"content": f"Tell a story about the {noun}.", "answer": "", "topic": noun, "starter": ""}
    if family == "constrained":
        s = rng.choice(STARTERS)
        return {"content": f'Tell a story where every sentence starts with "{s}".',
                "answer": "", "topic": "", "starter": s}
    if family == "sentiment":
        item = rng.choice(ITEMS)
        return {"content": f"Write a review of the {item}.", "answer": "", "topic": item, "starter": ""}
    raise ValueError(f"Unknown toy family {family!r}; choose from {FAMILIES}.")


def make_prompts(families=FAMILIES, n_per_family: int = 32, seed: int = 0) -> list[dict]:
    """Rows in TRL's conversational prompt-only format plus the columns rewards need.

    Each row: ``prompt`` (a one-message conversation), ``family``, ``answer`` (arith),
    ``topic`` and ``starter`` (constrained). Families alternate, so a prefix is balanced.
    """
    rng = random.Random(f"prompts-{seed}")
    per_family = {f: [_prompt(rng, f) for _ in range(n_per_family)] for f in families}
    rows = []
    for i in range(n_per_family):
        for f in families:
            p = per_family[f][i]
            rows.append({"prompt": [{"role": "user", "content": p.pop("content")}], "family": f, **p})
    return rows


# --- responses (the pretraining corpus) -----------------------------------------------------

def _response(rng: random.Random, row: dict) -> str:
    family = row["family"]
    if family == "arith":
        s = int(row["answer"])
        if rng.random() >= ARITH_CORRECT_P:
            s = max(0, s + rng.choice([-2, -1, 1, 2]))
        return f"The answer is {s}."
    if family == "story":
        first = _story_sentence(rng, subject=row["topic"])
        return " ".join([first] + [_story_sentence(rng) for _ in range(STORY_SENTENCES - 1)])
    if family == "constrained":
        sentences = []
        for _ in range(STORY_SENTENCES):
            s = row["starter"] if rng.random() < CONSTRAINT_KEEP_P else rng.choice(STARTERS)
            sentences.append(f"{s} {_story_sentence(rng)}")
        return " ".join(sentences)
    if family == "sentiment":
        polarity = rng.choice(["pos", "neg", "pos", "neg", "mixed"])
        good = polarity == "pos" or (polarity == "mixed" and rng.random() < 0.5)

        def pick(pos, neg):
            flip = rng.random() < 0.2
            return rng.choice(pos if good != flip else neg)

        return (f"the {row['topic']} was {pick(POSITIVE, NEGATIVE)}. "
                f"i {pick(LIKE, DISLIKE)} the {rng.choice(PARTS)}. "
                f"the {rng.choice(PARTS)} was {pick(POSITIVE, NEGATIVE)}.")
    raise ValueError(f"Unknown toy family {family!r}.")


def make_corpus(n_docs: int = 20000, seed: int = 0, families=FAMILIES) -> list[dict]:
    """Pretraining conversations: ``{"messages": [user, assistant], "family": ...}``."""
    rng = random.Random(f"corpus-{seed}")
    docs = []
    for _ in range(n_docs):
        family = rng.choice(families)
        row = make_prompts([family], 1, seed=rng.randrange(1 << 30))[0]
        reply = _response(rng, row)
        docs.append({"messages": row["prompt"] + [{"role": "assistant", "content": reply}],
                     "family": family})
    return docs


# --- rewards (TRL signature: prompts, completions, **columns -> list[float]) ---------------

_INT_RE = re.compile(r"-?\d+")


def arith_score(text: str, answer: str) -> float:
    """1.0 if the first integer in the text equals the answer, else 0.0."""
    m = _INT_RE.search(text)
    return float(m is not None and m.group() == str(answer).strip())


def arith_final_score(text: str, answer: str) -> float:
    """1.0 if the last integer in the text equals the answer (for chatty real models that
    restate the question, e.g. "3 + 4 = 7."), else 0.0."""
    numbers = _INT_RE.findall(text)
    return float(bool(numbers) and numbers[-1] == str(answer).strip())


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in text.strip().split(".") if s.strip()]


def is_grammatical(sentence: str) -> bool:
    m = _SENTENCE_RE.fullmatch(sentence.strip().rstrip(".").strip())
    return bool(m) and (
        m["adj"] in ADJS and m["noun"] in NOUNS and m["verb"] in VERBS
        and m["obj"] in NOUNS and m["place"] in PLACES
    )


def story_score(text: str) -> float:
    """Grammatical share of the (at least STORY_SENTENCES) sentences x distinct word-3-grams."""
    sentences = _sentences(text)
    if not sentences:
        return 0.0
    grammatical = sum(is_grammatical(s) for s in sentences) / max(len(sentences), STORY_SENTENCES)
    return grammatical * distinct_ngram_ratio(text.replace(".", " ").split())


def constrained_parts(text: str, starter: str) -> tuple[float, float]:
    """(share of sentences starting with ``starter``, story quality without the starters): the
    paper's constraint-first win rate compares the first, then the second on ties."""
    sentences = _sentences(text)
    if not sentences:
        return 0.0, 0.0
    kept = [s.split(" ", 1) for s in sentences]
    constraint = sum(k[0] == starter for k in kept) / max(len(sentences), STORY_SENTENCES)
    rest = ". ".join(k[1] if len(k) > 1 else "" for k in kept) + "."
    return constraint, story_score(rest)


def constrained_score(text: str, starter: str) -> float:
    """0.7 x share of sentences starting with ``starter`` + 0.3 x story quality without it."""
    constraint, quality = constrained_parts(text, starter)
    return 0.7 * constraint + 0.3 * quality


_VADER = None


def vader_compound(text: str) -> float:
    """VADER compound sentiment score in [-1, 1] (needs the ``eval`` extra)."""
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError("The sentiment reward needs vaderSentiment: pip install 'lpo-train[eval]'") from e
        _VADER = SentimentIntensityAnalyzer()
    return float(_VADER.polarity_scores(text)["compound"]) if text.strip() else 0.0


def _column(kwargs: dict, name: str, n: int) -> list:
    if name not in kwargs:
        raise KeyError(f"This reward needs the dataset column {name!r}; add it to your prompt dataset.")
    values = kwargs[name]
    if len(values) != n:
        raise ValueError(f"Column {name!r} has {len(values)} values for {n} completions.")
    return list(values)


def arith_reward(prompts, completions, answer, **kwargs) -> list[float]:
    return [arith_score(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]


def arith_final_reward(prompts, completions, answer, **kwargs) -> list[float]:
    return [arith_final_score(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]


def story_reward(prompts, completions, **kwargs) -> list[float]:
    return [story_score(completion_text(c)) for c in completions]


def constrained_reward(prompts, completions, starter, **kwargs) -> list[float]:
    return [constrained_score(completion_text(c), s) for c, s in zip(completions, starter, strict=True)]


def sentiment_reward(prompts, completions, **kwargs) -> list[float]:
    """VADER compound of the continuation, in [-1, 1]."""
    return [vader_compound(completion_text(c)) for c in completions]


def toy_reward(prompts, completions, family, **kwargs) -> list[float]:
    """Each completion scored by its family's reward, all in [0, 1] (sentiment mapped (c+1)/2)."""
    n = len(completions)
    answer = _column(kwargs, "answer", n) if "arith" in family else [""] * n
    starter = _column(kwargs, "starter", n) if "constrained" in family else [""] * n
    out = []
    for c, f, a, s in zip(completions, family, answer, starter, strict=True):
        text = completion_text(c)
        if f == "arith":
            out.append(arith_score(text, a))
        elif f == "story":
            out.append(story_score(text))
        elif f == "constrained":
            out.append(constrained_score(text, s))
        elif f == "sentiment":
            out.append((vader_compound(text) + 1) / 2)
        else:
            raise ValueError(f"Unknown toy family {f!r}; choose from {FAMILIES}.")
    return out


@dataclass(frozen=True)
class ToySize:
    hidden_size: int
    num_layers: int
    num_heads: int
    steps: int
    batch_size: int


# Both sizes share one tokenizer. "small" is the demo size (<= 5 min on 2 CPU cores).
TOY_SIZES = {
    "small": ToySize(hidden_size=64, num_layers=2, num_heads=4, steps=1500, batch_size=32),
    "base": ToySize(hidden_size=128, num_layers=4, num_heads=4, steps=3000, batch_size=32),
}


DEFAULT_PROMPT_FAMILIES = ("arith", "story")


def load_toy_prompts(spec: str, seed: int = 0, split: str = "train", toy_families=None,
                     toy_prompts_per_family: int = 64, **options) -> list[dict]:
    """``dataset_name: toy``: ``toy_prompts_per_family`` prompts of each of ``toy_families`` (default arith, story)."""
    if spec != NAME:
        raise ValueError(f"The toy dataset takes no options after its name: give dataset_name '{NAME}' (and "
                         f"toy_families / toy_prompts_per_family), got {spec!r}.")
    return make_prompts(list(toy_families or DEFAULT_PROMPT_FAMILIES), toy_prompts_per_family, seed=seed)


def _register() -> None:
    from lpo_train.registry import register_dataset, register_reward

    for name, fn in ((NAME, toy_reward), ("arith", arith_reward), ("arith_final", arith_final_reward),
                     ("story", story_reward), ("constrained", constrained_reward), ("sentiment", sentiment_reward)):
        register_reward(name, fn)
    register_dataset(NAME, load_toy_prompts, default_rewards=[NAME])


_register()
