"""One registry style for rewards, prompt datasets and model specs: the built-in tasks register like a
user's own entries, the generic modules dispatch only through the registries, unknown names list the
registered ones."""

import ast
import re
from pathlib import Path

import pytest

from lpo_train.data import load_prompt_dataset
from lpo_train.models.loading import load_causal_lm, portable_name, resolve_model_path
from lpo_train.registry import DATASETS, MODELS, REWARDS, register_dataset, register_model, register_reward

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def user_entries(toy_lm_folder):
    """A user's dataset ('numbers:N'), model spec ('my_lm') and reward, registered as the docs show."""

    @register_dataset("numbers")
    def numbers(spec, seed=0, split="train", **options):
        count = int(spec.partition(":")[2] or 4)
        return [{"prompt": [{"role": "user", "content": f"What is {i} + {seed}?"}], "answer": str(i + seed)}
                for i in range(count)]

    @register_model("my_lm")
    def my_lm(spec):
        return str(toy_lm_folder)

    @register_reward("says_answer")
    def says_answer(prompts, completions, answer, **kwargs):
        return [float(a in str(c)) for c, a in zip(completions, answer, strict=True)]

    yield
    DATASETS.unregister("numbers")
    MODELS.unregister("my_lm")
    REWARDS.unregister("says_answer")


def test_a_user_registered_dataset_model_and_reward_train_through_lpo_config(user_entries, tmp_path):
    from lpo_train.trainers import LPOTrainer
    from tests.helpers.configs import toy_lpo_config

    args = toy_lpo_config(tmp_path, model_name_or_path="my_lm", dataset_name="numbers:4", dataset_seed=3,
                          reward_funcs=["says_answer"], max_steps=1)
    prompts = args.load_prompts()
    assert prompts["answer"] == ["3", "4", "5", "6"]  # the loader got the spec's options and the seed
    model, _ = load_causal_lm("my_lm")
    assert model.config.name_or_path == "my_lm"  # no hub_id: the spec is what a head records
    trainer = LPOTrainer(args=args)
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.bare_head().config.base_model == "my_lm"
    assert any("rewards/says_answer/mean" in entry for entry in trainer.state.log_history)


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"no dataset named 'no_such_suite' is registered\. Registered datasets: "
                                         r"\['reasoning_gym', 'smollm2_mix', 'toy'\]; register your own"):
        load_prompt_dataset("no_such_suite:eval")
    with pytest.raises(FileNotFoundError, match=r"'no_such_suite' is not a local file.*registered dataset: "
                                                r"\['reasoning_gym', 'smollm2_mix', 'toy'\]"):
        load_prompt_dataset("no_such_suite")  # a bare name may be a Hub id: tried there (offline in tests)
    with pytest.raises(ValueError, match=r"no model spec named 'toyy' is registered\. Registered model specs: "
                                         r"\['smollm2', 'toy'\]"):
        load_causal_lm("toyy:small")
    with pytest.raises(FileNotFoundError, match=r"registered model spec: \['smollm2', 'toy'\]"):
        load_causal_lm("no-such-model-anywhere")
    with pytest.raises(ValueError, match=r"Built-in rewards: \[.*'toy'.*\] \(with any registered"):
        from lpo_train.rewards import resolve_reward

        resolve_reward("toyy")


def test_a_taken_name_and_a_bad_name_are_errors():
    def other_toy(spec, seed=0, **options):
        return []

    with pytest.raises(ValueError, match=r"A dataset named 'toy' is already registered \(lpo_train\.tasks\.toy\."):
        register_dataset("toy", other_toy)
    with pytest.raises(ValueError, match="A model spec name must be a non-empty string without ':'"):
        register_model("my:lm", lambda spec: spec)
    toy_loader = DATASETS.entries()["toy"]
    assert register_dataset("toy", toy_loader, default_rewards=["toy"]) is toy_loader  # the same entry again: no conflict


def test_a_loader_returning_something_else_is_named():
    register_dataset("broken", lambda spec, **options: {"prompt": ["a"]})
    try:
        with pytest.raises(TypeError, match="registered as 'broken' returned dict; it must return a list of rows"):
            load_prompt_dataset("broken")
    finally:
        DATASETS.unregister("broken")


def test_builtin_specs_resolve_through_the_registry(toy_lm_folder):
    assert {"toy", "smollm2_mix", "reasoning_gym"} <= set(DATASETS.names())
    assert {"toy", "smollm2"} <= set(MODELS.names())
    assert resolve_model_path("toy:small") == resolve_model_path("toy") == str(toy_lm_folder)
    assert portable_name("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct" and portable_name("toy:base") == "toy:base"
    assert resolve_model_path("org/toy:small") == "org/toy:small"  # a Hub id never names a registered spec
    with pytest.raises(ValueError, match=r"'toy:SIZE\[:SEED\]' with SIZE one of \['base', 'small'\]"):
        resolve_model_path("toy:huge")
    with pytest.raises(ValueError, match="toy dataset takes no options"):
        load_prompt_dataset("toy:arith")
    assert load_prompt_dataset("smollm2_mix:eval:capital+copy")["family"][:2] == ["capital", "copy"]


def _names_in_strings(path: Path, names: list[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", node.value)]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [m for m in modules if m.startswith("lpo_train.tasks") or m == "lpo_train.models.smollm2"]
    return found


@pytest.mark.parametrize("module", ["lpo_train/data.py", "lpo_train/models/loading.py"])
def test_the_generic_modules_name_no_task_or_model(module):
    names = sorted(set(DATASETS.names()) | set(MODELS.names()))
    assert _names_in_strings(ROOT / module, names) == []


def test_a_dataset_names_its_default_rewards_for_every_command(tmp_path):
    """register_dataset(..., default_rewards=...) is what train, evaluate and train-value use without reward_funcs
    (the toy world's 'toy' reward comes this way); a dataset without them, a file or a Hub id gets none."""
    from lpo_train.evaluation.harness import EvalConfig
    from lpo_train.registry import DATASETS, default_rewards, register_dataset
    from lpo_train.trainers.value import ValueDataArguments
    from tests.helpers.configs import toy_lpo_config

    register_dataset("with_reward", lambda spec, seed=0, split="train", **o: [{"prompt": "x"}],
                     default_rewards=["arith"])
    try:
        assert default_rewards("with_reward:opts") == ["arith"] and default_rewards("toy") == ["toy"]
        assert default_rewards("prompts.jsonl") == [] and default_rewards("org/data") == [] == default_rewards(None)
        assert toy_lpo_config(tmp_path, dataset_name="with_reward").reward_funcs == ["arith"]
        assert EvalConfig(dataset_name="with_reward", output_dir=str(tmp_path / "e")).reward_funcs == ["arith"]
        assert ValueDataArguments(dataset_name="with_reward").reward_funcs == ["arith"]
        assert EvalConfig(dataset_name="with_reward", reward_funcs=["story"],
                          output_dir=str(tmp_path / "e")).reward_funcs == ["story"]  # given ones win
    finally:
        DATASETS.unregister("with_reward")
    assert default_rewards("with_reward") == []  # gone with its entry
    with pytest.raises(ValueError, match="already registered"):  # a built-in name: refused, defaults untouched
        register_dataset("toy", lambda spec, **o: [], default_rewards=["arith"])
    assert default_rewards("toy") == ["toy"]


def test_a_plugin_module_registers_for_the_command_line(tmp_path, monkeypatch):
    """LPO_TRAIN_PLUGINS names a module that registers a dataset: a fresh process (as a command-line run is) finds
    it; a plug-in that cannot be imported is an error naming the variable."""
    import os
    import subprocess
    import sys

    (tmp_path / "my_plugin_tasks.py").write_text(
        "from lpo_train.registry import register_dataset\n"
        "register_dataset('plugin_sums', lambda spec, seed=0, split='train', **o: "
        "[{'prompt': f'What is {i} + 1?'} for i in range(3)], default_rewards=['arith'])\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]), "HF_HUB_OFFLINE": "1",
           "LPO_TRAIN_PLUGINS": "my_plugin_tasks"}
    code = ("from lpo_train.evaluation.harness import EvalConfig, load_rows; "
            "c = EvalConfig(dataset_name='plugin_sums', output_dir='unused'); print(len(load_rows(c)), c.reward_funcs)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "3 ['arith']"
    from lpo_train import registry

    monkeypatch.setenv("LPO_TRAIN_PLUGINS", "no_such_plugin_module")
    with pytest.raises(ImportError, match="LPO_TRAIN_PLUGINS"):
        registry.load_builtins()
