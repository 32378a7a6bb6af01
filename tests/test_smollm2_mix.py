"""The smollm2_mix suite: rewards on fixed texts (by hand), disjoint balanced splits, the CLI dataset name."""

import pytest

from lpo_train.data import load_prompt_dataset
from lpo_train.rewards import resolve_reward
from lpo_train.tasks.smollm2_mix import (
    DEFAULT_FAMILIES,
    all_rows,
    copy_score,
    list_items,
    list_score,
    make_rows,
    named_item,
    pick_scores,
)


def test_list_reward_counts_distinct_valid_items():
    greedy_loop = "1. Dog\n2. Cat\n3. Bird\n4. Fish\n5. Fish\n6. Fish\n7. Fish\n8. Fish"  # SmolLM2 at T = 0
    assert list_items(greedy_loop)[:4] == ["dog", "cat", "bird", "fish"]
    assert list_score(greedy_loop, "animals", 8) == pytest.approx(4 / 8)
    invented = "1. Carpet Python\n2. Foxhawk\n3. Parrot\n4. Pomerpec"  # SmolLM2 at T = 0.7
    assert list_score(invented, "animals", 4) == pytest.approx(1 / 4)  # only 'parrot' is an animal
    assert list_score("Chimpanzees, dolphins, dogs, elephants, foxes", "animals", 5) == 1.0  # plurals, commas
    assert list_score("1. Red\n2. Blue\n3. Green", "colors", 5) == pytest.approx(3 / 5)  # a short list earns less
    assert list_score("adaaahahahaaha for dappka", "animals", 8) == 0.0  # noise


def test_pick_reward_pays_for_valid_answers_that_differ_between_samples():
    texts = ["A cat.", "The cat is my pick.", "Lynx", "Foxhawk, obviously."]
    scores = pick_scores(texts, ["animals"] * 4, ["p"] * 4)
    assert scores == [0.5, 0.5, 1.0, 0.0]  # two cats share the credit; an invented word earns nothing
    assert pick_scores(["cat"] * 4, ["animals"] * 4, ["p"] * 4) == [0.25] * 4  # greedy: the same answer N times
    assert pick_scores(["cat", "cat"], ["animals"] * 2, ["p", "q"]) == [1.0, 1.0]  # other prompts do not count
    # the item must be named early: a rambling answer that mentions it late earns nothing
    late = "Well, there are so many lovely options to think about here and I cannot decide, maybe a dog"
    assert named_item(late, "animals") is None and named_item("Sure! The zebra.", "animals") == "zebra"


def test_copy_reward_needs_the_sentence_word_for_word():
    sentence = "The small dog waits near the station every morning."
    assert copy_score('Sure! "The small dog waits near the station every morning."', sentence) == 1.0  # quoted, framed
    assert copy_score("the small dog waits near the station, every morning", sentence) == 1.0  # case, punctuation
    assert copy_score("The small dog waits near the train station every morning.", sentence) == 0.0  # a sampled slip
    assert copy_score("The small dog waits near the station.", sentence) == 0.0  # cut short
    assert copy_score("The small dogs waits near the station every morning.", sentence) == 0.0  # whole words only


def test_pick_fewshot_prompts_are_pick_requests_after_four_one_word_turns():
    rows = {r["family"]: r for r in all_rows() if r["prompt"][-1]["content"] == "Name a random animal. Answer with one word."}
    assert rows["pick"]["prompt"] == [{"role": "user", "content": "Name a random animal. Answer with one word."}]
    turns = rows["pick_fewshot"]["prompt"]
    assert [t["role"] for t in turns] == ["user", "assistant"] * 4 + ["user"] and turns[-1] == rows["pick"]["prompt"][0]
    assert "Otter." not in [t["content"] for t in turns]  # the asked category's own example is left out
    assert all(len(t["content"].split()) == 1 for t in turns[1:-1:2])  # the format taught: one word
    assert rows["pick"]["split"] == rows["pick_fewshot"]["split"]  # a held-out request is held out in both forms


def test_builtin_reward_dispatches_by_family():
    reward = resolve_reward("smollm2_mix")
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Capital?"}],
               [{"role": "user", "content": "Name a random fruit."}], [{"role": "user", "content": "Name a random fruit."}]]
    out = reward(prompts, ["3 + 4 = 7.", "It is Paris.", "Mango", "Mango!"], family=["arith", "capital", "pick", "pick"],
                 answer=["7", "Paris", "fruits", "fruits"])
    assert out == [1.0, 1.0, 0.5, 0.5]
    fewshot = next(r for r in make_rows("smollm2_mix:eval:pick_fewshot") if r["answer"] == "animals")
    copy = make_rows("smollm2_mix:eval:copy")[0]
    out = reward([fewshot["prompt"]] * 3 + [copy["prompt"]], ["Lynx.", "Zarilla.", "Lynx", copy["answer"]],
                 family=["pick_fewshot"] * 3 + ["copy"], answer=[fewshot["answer"]] * 3 + [copy["answer"]])
    assert out == [0.5, 0.0, 0.5, 1.0]  # two lynxes share the credit, an invented animal earns nothing
    zero_shot = next(r for r in all_rows() if r["family"] == "pick" and r["prompt"][-1] == fewshot["prompt"][-1])
    out = reward([fewshot["prompt"], zero_shot["prompt"]], ["Lynx.", "Lynx."], family=["pick_fewshot", "pick"],
                 answer=["animals", "animals"])
    assert out == [1.0, 1.0]  # the same request with and without the earlier turns: two prompts, two groups
    with pytest.raises(ValueError, match="no reward for family 'story'"):
        reward(None, ["x"], family=["story"], answer=[""])


def test_splits_are_disjoint_balanced_and_usable_by_name():
    import json

    train, held = make_rows("smollm2_mix"), make_rows("smollm2_mix:eval")
    text = lambda rows: {r["prompt"][-1]["content"] for r in rows}  # noqa: E731
    assert not text(train) & text(held)
    assert set(DEFAULT_FAMILIES) == {"capital", "copy", "pick_fewshot"}
    for rows in (train, held):
        counts = {f: sum(r["family"] == f for r in rows) for f in DEFAULT_FAMILIES}
        assert sum(counts.values()) == len(rows) and len(set(counts.values())) == 1 and min(counts.values()) >= 19
    assert len(all_rows()) == len({json.dumps(r["prompt"]) for r in all_rows()})  # no duplicate prompt
    only = load_prompt_dataset("smollm2_mix:eval:arith+pick")
    assert set(only["family"]) == {"arith", "pick"}
    with pytest.raises(ValueError, match="Unknown smollm2_mix families"):
        make_rows("smollm2_mix:eval:poems")


def test_shipped_references_are_the_train_split_with_correct_answers():
    """recipes/smollm2-135m/data/references.jsonl (the likelihood objective's SmolLM2 data) is what
    scripts/make_smollm2_references.py writes: one reference per train prompt, each earning full credit."""
    import importlib.util
    import json
    import random
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_refs", root / "scripts" / "make_smollm2_references.py")
    make_refs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_refs)
    shipped = [json.loads(line) for line in (root / "recipes/smollm2-135m/data/references.jsonl").read_text().splitlines()]
    rng = random.Random("smollm2-references")
    assert shipped == [{**r, "completion": make_refs.reference(r, rng)} for r in make_rows("smollm2_mix")]
    reward = resolve_reward("smollm2_mix")
    for row in shipped:  # each alone in its group, so a valid pick earns 1 too
        assert reward([row["prompt"]], [row["completion"]], family=[row["family"]], answer=[row["answer"]]) == [1.0], row
