"""``lpo-train evaluate`` never reuses a stale strategy: its fingerprint covers a reward model's weights, KLD's
evidence column, the tokenizer and chat template, and the user's modules a reward file imports."""

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lpo_train.evaluation.fingerprints import reward_fingerprint, reward_source_files, tokenizer_fingerprint
from lpo_train.evaluation.harness import EvalConfig, evaluate

PROMPTS = ["Tell me about the cat.", "Tell me about the sun.", "Say a word."]


def _config(lm, tmp_path, **kw):
    suite = tmp_path / "suite.jsonl"
    if not suite.exists():
        suite.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    base = dict(model_name_or_path=str(lm), dataset_name=str(suite), dataset_split="train",
                reward_funcs=["negative_repetition"], temperatures=[0.0], num_generations=1, max_completion_length=6,
                n_boot=10, output_dir=str(tmp_path / "e"))
    return EvalConfig(**{**base, **kw})


def test_a_reward_model_changed_at_the_same_path_is_rescored(tokenizer, tiny_lm_path, tmp_path, capsys):
    from lpo_train.models import build_reward_model

    rm = build_reward_model(tokenizer)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    config = _config(tiny_lm_path, tmp_path, reward_funcs=[str(tmp_path / "rm")])
    first = evaluate(config)["T=0"]["mean_reward"]
    capsys.readouterr()
    with torch.no_grad():
        rm.score.weight.neg_()  # the same architecture, files and path; every score flips sign
    rm.save_pretrained(tmp_path / "rm")
    second = evaluate(config)["T=0"]["mean_reward"]
    out = capsys.readouterr().out
    assert "computed with other settings" in out and "resumed" not in out
    assert first != 0 and second == pytest.approx(-first)  # greedy: the same texts, scored by the flipped model
    evaluate(config)
    assert "resumed: reused 1 finished strategies" in capsys.readouterr().out  # unchanged: reused


def test_a_changed_chat_template_recomputes(tiny_lm_path, tmp_path, capsys):
    from transformers import AutoTokenizer

    lm = tmp_path / "lm"
    shutil.copytree(tiny_lm_path, lm)
    config = _config(lm, tmp_path)
    evaluate(config)
    capsys.readouterr()
    tok = AutoTokenizer.from_pretrained(lm)
    tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")  # the LM's weights are unchanged
    tok.save_pretrained(lm)
    evaluate(config)
    out = capsys.readouterr().out
    assert "computed with other settings" in out and "resumed" not in out


def test_tokenizer_fingerprint(tokenizer):
    same = copy.deepcopy(tokenizer)
    assert tokenizer_fingerprint(same) == tokenizer_fingerprint(tokenizer)
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<extra_token>"])
    prints = {tokenizer_fingerprint(t) for t in (tokenizer, templated, grown)}
    assert len(prints) == 3


def test_another_evidence_column_recomputes_kld_only(tiny_lm_path, tmp_path, capsys):
    rows = [{"prompt": "Facts: the sky is green. Note: it rains. What colour is the sky?",
             "evidence": "Facts: the sky is green.", "note": "Note: it rains."},
            {"prompt": "Facts: Bob is 7. Note: Bob runs. How old is Bob?",
             "evidence": "Facts: Bob is 7.", "note": "Note: Bob runs."}]
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tiny_lm_path, tmp_path, strategies=["kld:T0=1,sigma=1"])
    evaluate(config)
    capsys.readouterr()
    config.evidence_column = "note"
    evaluate(config)
    out = capsys.readouterr().out
    assert "resumed: reused 1 finished strategies" in out and "(T=0)" in out  # the fixed T does not read it
    assert "kld_T0=1_sigma=1.json: computed with other settings" in out


USER_PACKAGE = {
    "__init__.py": "",
    "score.py": ("import json\nimport torch\nfrom lpo_train.text import completion_text\nfrom . import lexicon\n"
                 "from .weights import WEIGHT\n\n\ndef score(prompts, completions, **kwargs):\n"
                 "    import fp_user_pkg.late as late\n\n"
                 "    return [WEIGHT * len(completion_text(c)) + late.BONUS + len(lexicon.WORDS)\n"
                 "            for c in completions]\n"),
    "lexicon.py": "from .deep import EXTRA\n\nWORDS = ['a', 'b'] + EXTRA\n",
    "deep.py": "EXTRA = ['c']\n",
    "weights.py": "WEIGHT = 1.0\n",
    "late.py": "BONUS = 0.0\n",
    "unused.py": "NOT_IMPORTED = 1\n",
}


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    folder = tmp_path / "user" / "fp_user_pkg"
    folder.mkdir(parents=True)
    for name, text in USER_PACKAGE.items():
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    yield folder
    for name in [m for m in sys.modules if m == "fp_user_pkg" or m.startswith("fp_user_pkg.")]:
        del sys.modules[name]


def test_reward_sources_follow_the_users_own_imports(user_package):
    from lpo_train import rewards
    from lpo_train.rewards import resolve_reward

    fn = resolve_reward("fp_user_pkg.score:score")
    files = {p.name for p in reward_source_files(fn)}
    # relative, absolute and function-level imports, transitively; not json (stdlib), torch or lpo_train (installed)
    assert files == {"__init__.py", "score.py", "lexicon.py", "deep.py", "weights.py", "late.py"}
    before = reward_fingerprint(fn)
    (user_package / "unused.py").write_text("NOT_IMPORTED = 2\n")
    assert reward_fingerprint(fn) == before
    (user_package / "deep.py").write_text("EXTRA = ['d']\n")  # two imports away from the reward file
    assert reward_fingerprint(fn)["source"] != before["source"]
    # a built-in reward: its own file only (the package is not the user's folder)
    builtin = reward_source_files(resolve_reward("negative_repetition"))
    assert builtin == [Path(rewards.__file__).resolve()]


def test_an_edited_module_the_reward_imports_recomputes(user_package, tiny_lm_path, tmp_path, capsys):
    config = _config(tiny_lm_path, tmp_path, reward_funcs=["fp_user_pkg.score:score"])
    evaluate(config)
    capsys.readouterr()
    (user_package / "lexicon.py").write_text("from .deep import EXTRA\n\nWORDS = ['a', 'b', 'z'] + EXTRA\n")
    evaluate(config)
    out = capsys.readouterr().out
    assert "computed with other settings" in out and "resumed" not in out
    evaluate(config)
    assert "resumed: reused 1 finished strategies" in capsys.readouterr().out
