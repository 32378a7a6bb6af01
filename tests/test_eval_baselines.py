"""The baselines a head is held to in ``lpo-train evaluate`` (MeanShift, the best fixed T chosen on a
training-side prompt set, the per-family oracle), NaN rewards as invalid, and the prompt-length guard.
Expectations are computed by hand, or from the per-strategy files the run wrote."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lpo_train.evaluation import baselines, metrics
from lpo_train.evaluation.harness import EvalConfig, drop_long_prompts, evaluate, prompt_length_limit

NAN = math.nan


# --- pure functions, hand-computed -----------------------------------------------------------------------------

def test_mean_chosen_value_weighs_tokens_or_sequences_by_the_heads_level():
    # per prompt, per sample, per token: a sequence-level head repeats its one value on every token
    values = [[[0.2, 0.2, 0.2], [1.0]], [[0.6, 0.6]]]
    assert baselines.mean_chosen_value(values, "token") == pytest.approx((0.6 + 1.0 + 1.2) / 6)
    assert baselines.mean_chosen_value(values, "sequence") == pytest.approx((0.2 + 1.0 + 0.6) / 3)
    assert baselines.meanshift_value(values, "token", "temperature") == 0.467  # rounded: what runs is the name
    assert baselines.meanshift_value([[[3.4, 3.4]]], "sequence", "top_k") == 3.0
    assert baselines.meanshift_name("head:h", "temperature", 0.467) == "meanshift(head:h)=T0.467"
    with pytest.raises(ValueError, match="applied no value"):
        baselines.mean_chosen_value([[[], []]], "token")


def test_best_temperature_and_the_per_family_oracle():
    assert baselines.best_temperature({0.0: 0.3, 0.5: 0.7, 1.0: 0.7}) == 0.5  # ties: the first in grid order
    assert baselines.best_temperature({0.0: NAN, 1.0: 0.1}) == 1.0
    families = ["a", "a", "b", "b"]
    items = {0.0: [1.0, 0.5, 0.0, 0.0], 1.0: [0.0, 0.0, 1.0, 0.8]}
    # family a: T0 0.75 vs T1 0; family b: T0 0 vs T1 0.9
    best, combined = baselines.per_family_oracle(items, families)
    assert best == {"a": 0.0, "b": 1.0} and combined == [1.0, 0.5, 1.0, 0.8]


def test_nan_scores_are_invalid_not_a_loss_for_both():
    # item 0 valid (1 > 0: a win); items 1 and 2 have no score on one side: left out and counted
    assert metrics.win_rate([1.0, NAN, 0.0], [0.0, 1.0, NAN]) == 100.0
    assert metrics.num_invalid([1.0, NAN, 0.0], [0.0, 1.0, NAN]) == 2
    assert math.isnan(metrics.win_rate([NAN], [NAN]))
    assert metrics.win_rate([(1.0, NAN), (1.0, 0.0)], [(0.0, 0.0), (0.0, 0.0)]) == 100.0  # tuples: each part valid
    no_valid = {"win_rate": None, "ci95": [None, None], "num_invalid": 1}
    assert metrics.paired_win_rate([NAN], [1.0], n_boot=10) == no_valid
    assert metrics.bootstrap_ci([1.0, NAN] * 5, [0.0, 0.0] * 5, n_boot=20) == (100.0, 100.0)
    # a prompt's score is the mean of its valid rewards; NaN only when none of its samples was scored
    assert baselines.item_scores([[1.0, NAN, 0.0], [NAN, NAN]])[0] == 0.5
    assert math.isnan(baselines.item_scores([[NAN, NAN]])[0])


ROWS = [{"family": "a"}, {"family": "a"}, {"family": "b"}, {"family": "b"}]
GRID = {"T=0": [[1.0], [0.5], [0.0], [0.0]], "T=1": [[0.0], [0.0], [1.0], [0.8]]}  # eval means 0.375 / 0.45
MEANSHIFT = {"strategy": "meanshift(head:h)=T0.5", "knob": "temperature", "value": 0.5, "level": "token"}


def _raw(head, meanshift):
    return {name: {"rewards": rewards} for name, rewards in
            {**GRID, "head:h": [[r] for r in head], MEANSHIFT["strategy"]: [[r] for r in meanshift]}.items()}


def test_baselines_chosen_on_train_and_the_verdict():
    raw = _raw([1.0, 0.5, 1.0, 0.5], [0.6] * 4)
    selection = {"mean_reward": {0.0: 0.9, 1.0: 0.1}, "same_as_eval": False, "dataset_name": "train.jsonl",
                 "dataset_split": "train", "dataset_seed": 0, "num_prompts": 4, "num_dropped_too_long": 0,
                 "num_shared_with_eval": 0}
    out = baselines.summarise_baselines(raw, ROWS, [0.0, 1.0], {"head:h": MEANSHIFT}, selection, n_boot=50, seed=0)
    best = out["best_fixed_T"]
    # the train side prefers T = 0 although T = 1 is better on the evaluation prompts (0.45 vs 0.375)
    assert (best["temperature"], best["chosen_on"], best["optimistic"]) == (0.0, "train", False)
    assert best["mean_reward"] == pytest.approx(0.375)
    assert out["per_family_oracle"]["temperature_by_family"] == {"a": 0.0, "b": 1.0}
    assert out["per_family_oracle"]["mean_reward"] == pytest.approx((1 + 0.5 + 1 + 0.8) / 4)
    head = out["heads"]["head:h"]
    # vs T0 [1, .5, 0, 0]: tie, tie, win, win; vs MeanShift 0.6: win, loss, win, loss; vs oracle [1, .5, 1, .8]:
    # tie, tie, tie, loss
    assert head["best_fixed_T"]["win_rate"] == 75.0
    assert head["meanshift"]["win_rate"] == 50.0
    assert head["per_family_oracle"]["win_rate"] == pytest.approx(37.5)
    for c in ("best_fixed_T", "meanshift", "per_family_oracle"):
        low, high = head[c]["ci95"]
        assert low <= head[c]["win_rate"] <= high
    assert head["beats_every_baseline"] is False and head["loses_to"] == ["meanshift", "per_family_oracle"]
    assert head["beats_fair_baselines"] is False  # it ties its MeanShift
    assert head["verdict"] == ("**head:h beats every baseline: no** (win rate at or below 50 % against MeanShift "
                               "(T=0.5) (50.0 %), per-family oracle (upper bound) (37.5 %)); against the fair "
                               "baselines alone (all but the upper bound): no")
    # a head that loses to the oracle only: no, but yes against the fair baselines
    only_oracle = baselines.summarise_baselines(_raw([1.0, 0.5, 1.0, 0.5], [0.4] * 4), ROWS, [0.0, 1.0],
                                                {"head:h": MEANSHIFT}, selection, n_boot=50, seed=0)["heads"]["head:h"]
    assert only_oracle["loses_to"] == ["per_family_oracle"] and only_oracle["beats_fair_baselines"] is True
    assert only_oracle["verdict"].endswith("(37.5 %)); against the fair baselines alone (all but the upper bound): yes")


def test_baselines_without_a_train_side_set_are_chosen_on_eval_and_flagged():
    raw = _raw([1.0, 0.5, 1.0, 0.9], [0.6] * 4)
    for selection in (None, {"mean_reward": {0.0: 0.9, 1.0: 0.1}, "same_as_eval": True}):
        out = baselines.summarise_baselines(raw, ROWS, [0.0, 1.0], {"head:h": MEANSHIFT}, selection, 50, 0)
        assert (out["best_fixed_T"]["temperature"], out["best_fixed_T"]["chosen_on"]) == (1.0, "eval")
        assert out["best_fixed_T"]["optimistic"] is True
        head = out["heads"]["head:h"]
        # vs T1 [0, 0, 1, .8]: win, win, tie, win; vs MeanShift: win, loss, win, win; vs oracle: tie x3, win
        assert [head[k]["win_rate"] for k in ("best_fixed_T", "meanshift", "per_family_oracle")] == [87.5, 75.0, 62.5]
        assert head["beats_every_baseline"] is True and head["loses_to"] == []
        assert head["verdict"].startswith("**head:h beats every baseline: yes**")


# --- the harness end to end, on a tiny LM --------------------------------------------------------------------------

REWARD = '''
def score(prompts, completions, family, **kwargs):
    """Word count mod 3 (a made-up reward that depends on the sample); no score at all for family 'none'."""
    return [None if f == "none" else float(len(c.split()) % 3) for c, f in zip(completions, family)]
'''


def _suite(path, prompts, family=None):
    path.write_text("".join(json.dumps({"prompt": p, "family": family or ("a" if i % 2 else "b")}) + "\n"
                            for i, p in enumerate(prompts)))
    return str(path)


@pytest.fixture
def user_reward(tmp_path, monkeypatch):
    import sys

    (tmp_path / "baseline_test_reward.py").write_text(REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "baseline_test_reward:score"
    sys.modules.pop("baseline_test_reward", None)


@pytest.fixture
def token_head(tiny_lm_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from lpo_train import AdaptiveDecoderHead

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    AdaptiveDecoderHead.for_model(lm, level="token", grid=[0.0, 0.5, 1.0]).save_pretrained(tmp_path / "head")
    return f"head:{tmp_path / 'head'}:sample"


def _items(out, folder, name):
    return baselines.item_scores(json.loads((out / folder / f"{name}.json").read_text())["rewards"])


def test_evaluate_runs_every_baseline_beside_a_head(tiny_lm_path, tmp_path, user_reward, token_head, capsys):
    words = ["cat", "dog", "sun", "tree", "cup", "map", "sky", "box"]
    suite = _suite(tmp_path / "eval.jsonl", [f"Tell me about the {w}." for w in words])
    train = _suite(tmp_path / "train.jsonl", [f"Say a word like {w}." for w in words[:6]])
    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name=suite, dataset_split="train",
                        reward_funcs=[user_reward], temperatures=[0.0, 1.0], strategies=[token_head],
                        num_generations=2, max_completion_length=8, n_boot=50,
                        selection_dataset_name=train, output_dir=str(tmp_path / "e"))
    summary = evaluate(config)
    out = tmp_path / "e"
    results = json.loads((out / "results.json").read_text())
    # MeanShift: the head's own mean applied temperature, over every token it decoded (a token-level head)
    head_raw = json.loads(next((out / "strategies").glob("head_*.json")).read_text())
    applied = [v for prompt in head_raw["values"] for seq in prompt for v in seq]
    mean = round(sum(applied) / len(applied), 3)
    assert 0 < mean < 1  # the untrained head samples its grid: off-grid mean
    meanshift = f"meanshift({token_head})=T{mean:g}"
    assert meanshift in summary and summary[meanshift]["mean_value_by_family"]["a"] == pytest.approx(mean)
    # the best fixed T is the grid value with the highest mean reward on the train-side prompts (their own files)
    sel_means = {t: metrics.valid_mean(_items(out, "selection", f"T={t:g}")) for t in (0.0, 1.0)}
    best = results["baselines"]["best_fixed_T"]
    assert best["temperature"] == max(sel_means, key=lambda t: (sel_means[t], -t)) and best["chosen_on"] == "train"
    assert best["selection_set"]["num_prompts"] == 6 and best["selection_set"]["num_shared_with_eval"] == 0
    head = results["baselines"]["heads"][token_head]
    assert head["best_fixed_T"] == summary[token_head]["win_rate_vs_fixed"][f"{best['temperature']:g}"]
    # the oracle: each family scored by its best fixed T on the evaluation prompts
    grid = {t: _items(out, "strategies", f"T={t:g}") for t in (0.0, 1.0)}
    fams = [json.loads(line)["family"] for line in open(suite)]
    oracle = []
    for i, fam in enumerate(fams):
        fam_mean = {t: metrics.mean([s for s, f in zip(grid[t], fams) if f == fam]) for t in grid}
        oracle.append(grid[max(fam_mean, key=lambda t: (fam_mean[t], -t))][i])
    head_items = _items(out, "strategies", next((out / "strategies").glob("head_*.json")).stem)
    assert head["per_family_oracle"]["win_rate"] == metrics.win_rate(head_items, oracle)
    report = (out / "report.md").read_text()
    assert sum("beats every baseline:" in line for line in report.splitlines()) == 1
    assert "chosen on the training-side prompt set" in report and "optimistic" not in report
    capsys.readouterr()

    # no train-side set: chosen on the evaluation prompts, flagged optimistic; everything else is reused
    from lpo_train.evaluation.harness import _safe_name

    assert (out / "strategies" / f"{_safe_name(meanshift)}.json").exists()
    stale = out / "strategies" / f"{_safe_name(f'meanshift({token_head})=T0.123')}.json"
    stale.write_text("{}")  # the head's MeanShift at a mean it no longer has: removed
    config.selection_dataset_name = None
    evaluate(config)
    assert not stale.exists()
    assert "resumed: reused 4 finished strategies" in capsys.readouterr().out  # T=0, T=1, the head, MeanShift
    report = (out / "report.md").read_text()
    assert "**optimistic** for this baseline: no training-side selection set" in report
    again = json.loads((out / "results.json").read_text())["baselines"]["best_fixed_T"]
    assert again["chosen_on"] == "eval" and again["optimistic"] is True


def test_meanshift_of_a_top_p_head_fixes_top_p_at_its_base_temperature(tiny_lm_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from lpo_train import AdaptiveDecoderHead

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    torch.manual_seed(0)
    AdaptiveDecoderHead.for_model(lm, level="sequence", knob="top_p", grid=[0.5, 0.9], base_temperature=0.3
                                  ).save_pretrained(tmp_path / "head")
    spec = f"head:{tmp_path / 'head'}:sample"
    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name=_suite(tmp_path / "s.jsonl", ["Hi.", "Yo."]),
                        dataset_split="train", reward_funcs=["negative_repetition"], temperatures=[0.0],
                        strategies=[spec], num_generations=4, max_completion_length=4, n_boot=10,
                        output_dir=str(tmp_path / "e"))
    summary = evaluate(config)
    head = json.loads(next((tmp_path / "e" / "strategies").glob("head_*.json")).read_text())
    sequences = [seq[0] for prompt in head["values"] for seq in prompt]  # one top-p per sequence
    assert {round(v, 6) for v in sequences} == {0.5, 0.9}  # the grid, in float32
    (name,) = [n for n in summary if n.startswith("meanshift(")]
    assert name == f"meanshift({spec})=top_p{round(sum(sequences) / len(sequences), 3):g}"
    assert summary[name]["mean_value_by_family"]["a"] == pytest.approx(0.3)  # it runs at the base temperature


def test_unscored_prompts_are_invalid_not_lost(tiny_lm_path, tmp_path, user_reward):
    rows = [{"prompt": f"Tell me about the {w}.", "family": f} for w, f in
            [("cat", "a"), ("dog", "none"), ("sun", "a"), ("cup", "none"), ("box", "a")]]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name=str(tmp_path / "s.jsonl"),
                        dataset_split="train", reward_funcs=[user_reward], temperatures=[0.0, 1.0], num_generations=2,
                        max_completion_length=8, n_boot=20, output_dir=str(tmp_path / "e"))
    summary = evaluate(config)
    t1 = summary["T=1"]
    assert t1["num_invalid_prompts"] == 2 and t1["num_invalid_rewards"] == 4
    assert t1["win_rate_vs_fixed"]["0"]["num_invalid"] == 2
    valid = [i for i, r in enumerate(rows) if r["family"] != "none"]
    hot = [_items(tmp_path / "e", "strategies", "T=1")[i] for i in valid]
    cold = [_items(tmp_path / "e", "strategies", "T=0")[i] for i in valid]
    points = [1.0 if h > c else 0.5 if h == c else 0.0 for h, c in zip(hot, cold)]
    assert t1["win_rate_vs_fixed"]["0"]["win_rate"] == pytest.approx(100 * sum(points) / 3)  # 3 valid prompts
    assert t1["mean_reward"] == pytest.approx(sum(hot) / 3)
    assert "none" not in [k for k, v in t1["mean_reward_by_family"].items() if v is not None]
    assert "Samples no reward scored (invalid, left out): T=0: 4, T=1: 4." in (tmp_path / "e" / "report.md").read_text()


# --- the prompt-length guard ---------------------------------------------------------------------------------------

def test_prompt_length_limit_is_the_smaller_of_the_field_and_the_models_room():
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    assert prompt_length_limit(EvalConfig(max_completion_length=64), model) == 448  # 512 - 64 < 512
    assert prompt_length_limit(EvalConfig(max_completion_length=64, max_prompt_length=100), model) == 100
    gpt2_like = SimpleNamespace(config=SimpleNamespace(n_positions=128))
    assert prompt_length_limit(EvalConfig(max_completion_length=100), gpt2_like) == 28
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        prompt_length_limit(EvalConfig(max_completion_length=512), model)
    with pytest.raises(ValueError, match="max_prompt_length must be >= 1"):
        EvalConfig(max_prompt_length=0)


def test_long_prompts_are_dropped_counted_and_warned_about(tiny_lm, tiny_lm_path, tmp_path):
    _, tokenizer = tiny_lm
    short = ["Hi.", "Tell me a story."]
    long = ["word " * 300, "the cat sat " * 100]
    rows = [{"prompt": p} for p in [short[0], long[0], short[1], long[1]]]
    templated = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                               tokenize=False) for r in rows]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in templated]
    assert max(lengths[0], lengths[2]) < 40 < min(lengths[1], lengths[3])
    with pytest.warns(UserWarning, match="2 of 4 prompts of the evaluation suite are longer than 40 tokens"):
        kept, dropped = drop_long_prompts(rows, tokenizer, 40)
    assert kept == [rows[0], rows[2]] and dropped == 2
    with pytest.raises(ValueError, match="Every prompt of the evaluation suite .* is longer than 5 tokens"):
        drop_long_prompts(rows, tokenizer, 5)
    # end to end: the dropped prompts are never decoded or scored, and results.json counts them
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name=str(tmp_path / "s.jsonl"),
                        dataset_split="train", reward_funcs=["negative_repetition"], temperatures=[0.0],
                        num_generations=1, max_completion_length=4, max_prompt_length=40, n_boot=10,
                        output_dir=str(tmp_path / "e"))
    with pytest.warns(UserWarning, match="2 of 4 prompts"):
        evaluate(config)
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["prompts"] == {"num_loaded": 4, "num_dropped_too_long": 2, "max_prompt_length": 40}
    assert len(json.loads((tmp_path / "e" / "strategies" / "T=0.json").read_text())["rewards"]) == 2
    assert "2 of 4 prompts were longer than 40 tokens" in (tmp_path / "e" / "report.md").read_text()
