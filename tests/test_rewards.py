import math

import pytest
import torch

from lpo_train.models import build_reward_model
from lpo_train.registry import builtin_rewards
from lpo_train.rewards import (
    RewardModel,
    compute_rewards,
    repetition_rate,
    resolve_reward,
    resolve_rewards,
)


def test_builtin_names_and_dotted_paths():
    assert resolve_reward("arith") is builtin_rewards()["arith"]
    fn = resolve_reward("tests.helpers.my_rewards:length_reward")
    assert fn(None, ["ab", "abcd"]) == [2.0, 4.0]
    own = lambda prompts, completions, **kw: [0.0] * len(completions)  # noqa: E731
    assert resolve_reward(own) is own


@pytest.mark.parametrize("spec,match", [
    ("no_such_reward", "Built-in rewards"), ("tests.helpers.my_rewards:missing", "Cannot import"),
    ("tests.helpers.my_rewards:NOT_CALLABLE", "not callable"), ("nosuchpkg.mod:fn", "Cannot import"),
])
def test_bad_reward_specs_are_clear(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_reward(spec)


def test_weights_must_match():
    with pytest.raises(ValueError, match="2 values for 1"):
        resolve_rewards(["arith"], [1.0, 2.0])


def test_repetition_rate_hand_computed():
    assert repetition_rate("a b c a b c") == pytest.approx(1 - 3 / 4)
    assert repetition_rate("one two") == 0.0 and repetition_rate("") == 0.0
    assert builtin_rewards()["negative_repetition"](None, ["a b c a b c"]) == [pytest.approx(-0.25)]


def test_compute_rewards_weights_none_and_columns():
    funcs, weights = resolve_rewards(["tests.helpers.my_rewards:length_reward",
                                      "tests.helpers.my_rewards:sometimes_none", "arith"], [0.5, 2.0, 1.0])
    total, per = compute_rewards(funcs, weights, ["p"] * 2, ["The answer is 4.", "skip 5"], answer=["4", "4"])
    assert per[0].tolist() == [16.0, 1.0, 1.0]
    assert per[1, 0] == 6.0 and math.isnan(per[1, 1]) and per[1, 2] == 0.0
    assert total.tolist() == [pytest.approx(8 + 2 + 1), pytest.approx(3.0)]
    nothing = lambda prompts, completions, **kw: [None] * len(completions)  # noqa: E731
    total, _ = compute_rewards([nothing], [1.0], ["p"], ["x"])
    assert math.isnan(total[0])
    short = lambda prompts, completions, **kw: [1.0]  # noqa: E731
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        compute_rewards([short], [1.0], ["p", "q"], ["x", "y"])


def test_reward_model_from_path_uses_its_own_template_and_right_padding(tokenizer, tmp_path):
    rm = build_reward_model(tokenizer, seed=3)
    with torch.no_grad():
        for p in rm.parameters():
            p.normal_(0, 0.3)
    rm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fn = resolve_reward(str(tmp_path))
    assert isinstance(fn, RewardModel) and fn.tokenizer.padding_side == "right"
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A much longer question here"}]]
    completions = ["Hello there", "Ok"]
    scores = fn(prompts, completions)
    for p, c, s in zip(prompts, completions, scores):  # one at a time, no padding: same score
        text = tokenizer.apply_chat_template(p + [{"role": "assistant", "content": c}], tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        assert s == pytest.approx(rm(**ids).logits[0, 0].item(), abs=1e-5)
    assert scores[0] != scores[1]
