"""``lpo-train generate`` and ``lpo-train train-value`` through the command line."""

import json

import pytest
import torch

from lpo_train.cli import dispatch as cli  # raises every error (main reports user errors: test_cli_errors)


@pytest.fixture(scope="module")
def guidance_folders(tiny_lm, tmp_path_factory):
    from lpo_train.guidance import make_value_model
    from lpo_train.models import build_tiny_lm

    base, tok = tiny_lm
    root = tmp_path_factory.mktemp("guidance")
    for name, seed in (("tuned", 1), ("untuned", 2)):
        m = build_tiny_lm(tok, hidden_size=32, num_layers=1, num_heads=4, seed=seed)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    value = make_value_model(base)
    with torch.no_grad():
        value.get_output_embeddings().weight.normal_(0, 0.2)
    value.save_pretrained(root / "value")
    tok.save_pretrained(root / "value")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about item {i}"}) + "\n" for i in range(5)))
    return root


def _args(root, base, method, out, *extra):
    return ["generate", "--method", method, "--model_name_or_path", str(base), "--tuned_model", str(root / "tuned"),
            "--untuned_model", str(root / "untuned"), "--value_model", str(root / "value"),
            "--dataset_name", str(root / "prompts.jsonl"), "--max_completion_length", "8", "--beam_width", "2",
            "--num_candidates", "2", "--chunk_length", "3", "--output_file", str(out),
            "--gold_reward_funcs", "tests.helpers.my_rewards:length_reward",
            "--reward_funcs", "tests.helpers.my_rewards:length_reward", *extra]


@pytest.mark.parametrize("method", ["base", "bon", "eft", "tokenrm", "cbs", "ivg", "args"])
def test_generate_writes_jsonl_for_every_method(guidance_folders, tiny_lm_path, tmp_path, method):
    out = tmp_path / f"{method}.jsonl"
    cli(_args(guidance_folders, tiny_lm_path, method, out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_index"] for r in records] == list(range(5))
    assert all(r["gold_reward"] == float(len(r["response"])) for r in records)
    meta = json.loads((tmp_path / f"{method}.meta.json").read_text())
    assert meta["stats"]["forward_tokens"] > 0
    assert not list(tmp_path.glob("*.partial"))
    searched = method in ("bon", "cbs", "ivg")
    assert all((r["score"] is not None) == searched for r in records)


def test_generate_weighs_its_rewards_with_the_shared_reward_weights(guidance_folders, tiny_lm_path, tmp_path):
    """generate's reward_funcs / reward_weights are the shared fields (as in train and evaluate): best-of-N with the
    length reward at weight -1 keeps each prompt's shortest candidate, scored -length; at weight 1 the longest."""
    scores = {}
    for weight in ("1", "-1"):
        out = tmp_path / f"bon{weight}.jsonl"
        cli(["generate", "--method", "bon", "--model_name_or_path", str(tiny_lm_path), "--dataset_name",
             str(guidance_folders / "prompts.jsonl"), "--max_completion_length", "8", "--num_candidates", "4",
             "--reward_funcs", "tests.helpers.my_rewards:length_reward", "--reward_weights", weight,
             "--output_file", str(out)])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(r["score"] == pytest.approx(float(weight) * len(r["response"])) for r in records)
        scores[weight] = [len(r["response"]) for r in records]
    assert all(short <= long for short, long in zip(scores["-1"], scores["1"]))
    assert scores["-1"] != scores["1"]


def test_generate_grid_cell_by_configuration_matches_the_api(guidance_folders, tiny_lm_path, tmp_path):
    """explicit token level x implicit chunk level, set by flags, equals the Python API."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lpo_train.decoding import SamplingParams
    from lpo_train.decoding.randomness import seed_for
    from lpo_train.guidance import ExplicitGuidance, ImplicitScorer, guided_generate, load_value_model

    out = tmp_path / "cell.jsonl"
    cli(_args(guidance_folders, tiny_lm_path, "cbs", out, "--token_guidance", "explicit", "--w_token", "0.5",
              "--seed", "3"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    base, tok = AutoModelForCausalLM.from_pretrained(tiny_lm_path), AutoTokenizer.from_pretrained(tiny_lm_path)
    load = AutoModelForCausalLM.from_pretrained
    value, _ = load_value_model(guidance_folders / "value")
    prompts = [f"tell me about item {i}" for i in range(5)]
    ranked = guided_generate(base, tok, prompts, rule=ExplicitGuidance(value, 0.5, 0.7),
                             scorer=ImplicitScorer(load(guidance_folders / "tuned"), load(guidance_folders / "untuned")),
                             width=2, candidates=2, chunk_length=3,
                             params=SamplingParams(max_new_tokens=8, prompt_seeds=[seed_for(3, i) for i in range(5)]))
    assert [r["response"] for r in records] == [r[0].text for r in ranked]
    assert [r["score"] for r in records] == pytest.approx([r[0].score for r in ranked], abs=1e-4)


def test_generate_bad_config_names_the_fix(guidance_folders, tiny_lm_path, tmp_path):
    with pytest.raises(ValueError, match="implicit guidance needs tuned_model .a tuned model and its untuned_model, or a PEFT adapter alone"):
        cli(["generate", "--method", "eft", "--model_name_or_path", str(tiny_lm_path)])
    with pytest.raises(ValueError, match="method must be one of"):
        cli(["generate", "--method", "beam"])
    with pytest.raises(ValueError, match="not a value model"):
        cli(_args(guidance_folders, tiny_lm_path, "ivg", tmp_path / "x.jsonl", "--value_model",
                  str(guidance_folders / "tuned")))


def test_train_value_cli_explicit(tiny_lm_path, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"story {i}"}) + "\n" for i in range(12)))
    cli(["train-value", "explicit", "--model_name_or_path", str(tiny_lm_path), "--dataset_name",
         str(prompts), "--reward_funcs", "tests.helpers.my_rewards:length_reward", "--num_generations", "3",
         "--max_completion_length", "6", "--eval_fraction", "0.25", "--value_loss", "mse", "--num_train_epochs", "1",
         "--use_cpu", "true", "--report_to", "none", "--output_dir", str(tmp_path / "v")])
    metrics = json.loads((tmp_path / "v" / "value_metrics.json").read_text())
    assert metrics["eval_responses"] == 9 and metrics["train_responses"] == 27  # 3 of 12 prompts held out
    from lpo_train.guidance import load_value_model

    load_value_model(tmp_path / "v")  # saved as a loadable value model
    with pytest.raises(SystemExit, match=r"needs a subcommand \(got '--config'\): lpo-train train-value implicit"):
        cli(["train-value", "--config", "x.yaml"])


def test_train_value_cli_reward_model_then_args(tiny_lm_path, tmp_path):
    """A sequence reward model from TRL's RewardTrainer, then used by ARGS through `generate`. Trained through the
    deprecated `--kind reward` form (placed after other flags): it still runs, with a FutureWarning naming the
    subcommand."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"story {i}"}) + "\n" for i in range(12)))
    with pytest.warns(FutureWarning, match="use 'lpo-train train-value reward ...'"):
        cli(["train-value", "--model_name_or_path", str(tiny_lm_path), "--kind", "reward", "--dataset_name",
             str(prompts), "--reward_funcs", "tests.helpers.my_rewards:length_reward", "--num_generations", "3",
             "--max_completion_length", "6", "--eval_fraction", "0.25", "--pair_mode", "best_worst",
             "--num_train_epochs", "1", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
             "--output_dir", str(tmp_path / "rm")])
    metrics = json.loads((tmp_path / "rm" / "value_metrics.json").read_text())
    assert metrics["kind"] == "reward" and metrics["train_pairs"] > 0 and 0 <= metrics["eval_pairwise_accuracy"] <= 1
    out = tmp_path / "args.jsonl"
    cli(["generate", "--method", "args", "--model_name_or_path", str(tiny_lm_path), "--reward_funcs",
         str(tmp_path / "rm"), "--args_k", "3", "--dataset_name", str(prompts), "--max_completion_length", "4",
         "--output_file", str(out)])
    assert len(out.read_text().splitlines()) == 12


SUBCOMMAND_FIELDS = {  # a field only that subcommand's parser has, and one of another's it must not list
    "implicit": ("--beta ", "--value_loss "),  # DPOConfig's beta
    "explicit": ("--value_loss ", "--beta "),  # ExplicitValueConfig's
    "reward": ("--center_rewards_coefficient ", "--use_peft "),  # RewardConfig's; no LoRA for the reward model
}


@pytest.mark.parametrize("kind", sorted(SUBCOMMAND_FIELDS))
def test_train_value_subcommand_help_lists_its_own_fields(kind, capsys):
    own, other = SUBCOMMAND_FIELDS[kind]
    with pytest.raises(SystemExit) as done:
        cli(["train-value", kind, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lpo-train train-value {kind} ")
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert options[0] == "--config" and "--pair_mode" in options  # the recipe first; the shared data fields too
    assert own in out and other not in out


def test_train_value_help_lists_the_subcommands(capsys):
    from lpo_train.trainers.value import main

    assert main(["--help"]) is None
    out = capsys.readouterr().out
    assert "{implicit,explicit,reward}" in out and "RewardTrainer" in out and "SUBCOMMAND --help" in out


def test_train_value_old_kind_flag_maps_to_the_subcommand(capsys):
    """--kind KIND (deprecated) anywhere, or --kind=KIND, is the subcommand KIND, with a FutureWarning; a bad or
    missing kind, or one that contradicts the subcommand, is an error naming the new form."""
    from lpo_train.trainers.value.cli import _from_kind_flag

    with pytest.warns(FutureWarning, match="deprecated"):
        assert _from_kind_flag(["--config", "r.yaml", "--kind", "implicit", "--beta", "0.1"]) == [
            "implicit", "--config", "r.yaml", "--beta", "0.1"]
    with pytest.warns(FutureWarning):
        assert _from_kind_flag(["--kind=reward", "--x", "1"]) == ["reward", "--x", "1"]
    with pytest.warns(FutureWarning):
        assert _from_kind_flag(["explicit", "--kind", "explicit"]) == ["explicit"]
    assert _from_kind_flag(["explicit", "--config", "r.yaml"]) == ["explicit", "--config", "r.yaml"]
    with pytest.raises(SystemExit, match=r"needs a subcommand \(got 'value'\): lpo-train train-value implicit"):
        _from_kind_flag(["--kind", "value"])
    with pytest.raises(SystemExit, match="needs a subcommand: "):
        _from_kind_flag(["--config", "r.yaml", "--kind"])
    with pytest.raises(SystemExit, match="train-value reward was given --kind explicit too: drop --kind"):
        _from_kind_flag(["reward", "--kind", "explicit"])
    with pytest.warns(FutureWarning), pytest.raises(SystemExit) as done:  # the old form reaches the kind's parser
        cli(["train-value", "--kind", "explicit", "--help"])
    assert done.value.code == 0 and "--value_loss " in capsys.readouterr().out
