"""The data layer's errors name the file, the line and the fix."""

import pytest

from lpo_train.data import load_prompt_dataset


def test_missing_empty_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        load_prompt_dataset(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        load_prompt_dataset(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_prompt_dataset(str(bad))
    no_prompt = tmp_path / "q.jsonl"
    no_prompt.write_text('{"question": "a"}\n')
    with pytest.raises(ValueError, match="needs a 'prompt' column"):
        load_prompt_dataset(str(no_prompt))
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "family": "x"}\n\n{"prompt": "b", "family": "y"}\n')
    assert load_prompt_dataset(str(good))["family"] == ["x", "y"]


def test_a_reward_returning_a_non_number_is_named():
    from lpo_train.rewards import compute_rewards

    def label(prompts, completions, **kw):
        return ["good" for _ in completions]

    with pytest.raises(TypeError, match="Reward function 'label' returned 'good' .str. for completion 0"):
        compute_rewards([label], [1.0], ["p"], ["c"])


def test_unknown_strategy_keys_list_the_valid_ones():
    from lpo_train.evaluation.harness import parse_strategy

    with pytest.raises(ValueError, match="Unknown key 'thetta' .* valid keys: T0, theta, N"):
        parse_strategy("edt:T0=1,thetta=1")
    assert parse_strategy("edt:T0=1,theta=2")[1]["theta"] == 2.0
