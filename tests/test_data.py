"""The data layer's errors name the file, the line and the fix."""

import pytest

from lpo_train.data import load_prompt_dataset
from lpo_train.utils.io import write_json_lines


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


def test_written_json_lines_load_back_as_the_same_rows(tmp_path):
    rows = [{"prompt": "Capital of France?", "completion": "Paris.", "family": "capital"},
            {"prompt": [{"role": "user", "content": "hi \u00e9"}], "completion": "Hello.", "family": "copy"}]
    path = write_json_lines(tmp_path / "new" / "refs.jsonl", rows)
    assert path.read_text().count("\n") == 2
    assert load_prompt_dataset(str(path)).to_list() == rows


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


def test_generate_checks_its_output_path_before_decoding(tmp_path):
    from lpo_train.guidance.run import GenerateConfig, run

    config = GenerateConfig(method="base", model_name_or_path="no-such-model-anywhere", output_file=str(tmp_path))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        run(config)  # raised before the (missing) model would be loaded


def test_a_missing_local_model_path_is_named(tmp_path):
    from lpo_train.models.loading import load_causal_lm

    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        load_causal_lm(str(tmp_path / "models" / "mine"))


def test_a_reward_file_in_the_current_folder_resolves(tmp_path, monkeypatch):
    import subprocess
    import sys

    (tmp_path / "my_rewards.py").write_text("def score(prompts, completions, **kw):\n    return [len(c) for c in completions]\n")
    code = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "  # as a console script sees it
            "from lpo_train.rewards import resolve_reward; print(resolve_reward('my_rewards:score')(None, ['ab']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[2]")


def test_a_csv_file_loads_as_csv_and_a_missing_local_path_is_named(tmp_path, monkeypatch):
    """A .csv path is read by datasets' csv builder, whether given with a folder or relative to the current one
    (never looked up as a Hub id); a local path that does not exist, and an unreadable suffix, are named."""
    (tmp_path / "prompts.csv").write_text('prompt,family\n"Capital of France, in one word?",capital\nHi,copy\n')
    rows = [{"prompt": "Capital of France, in one word?", "family": "capital"}, {"prompt": "Hi", "family": "copy"}]
    assert load_prompt_dataset(str(tmp_path / "prompts.csv")).to_list() == rows
    monkeypatch.chdir(tmp_path)
    assert load_prompt_dataset("prompts.csv").to_list() == rows
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv is empty"):
        load_prompt_dataset("empty.csv")
    for missing in ("data/prompts.csv", "./prompts_folder", "data/sub/prompts"):
        with pytest.raises(FileNotFoundError, match=f"{missing} does not exist .dataset_name."):
            load_prompt_dataset(missing)
    (tmp_path / "prompts.txt").write_text("Hi\n")
    with pytest.raises(ValueError, match=r"prompts.txt has suffix '.txt'.*\.csv"):
        load_prompt_dataset("prompts.txt")


def test_an_unreachable_hub_dataset_says_both_places_were_tried():  # tests run offline (conftest)
    with pytest.raises(FileNotFoundError, match="'no-such-org/no-such-set' is not a local file or folder, and as a Hub"):
        load_prompt_dataset("no-such-org/no-such-set")


@pytest.mark.parametrize("opening", ["", "{{ bos_token }}"])  # ChatML as is, and after a BOS (as Llama 3 starts)
def test_prompts_that_already_hold_the_chat_template_are_not_wrapped_again(opening):
    """TRL standard prompts made with apply_chat_template(..., tokenize=False) encode as the conversation they
    came from (the template once), a system turn too; a plain string is still wrapped."""
    from lpo_train.decoding.engine import encode_prompts
    from lpo_train.models import train_bpe_tokenizer
    from lpo_train.models.kit import CHATML_TEMPLATE

    tok = train_bpe_tokenizer(texts=["hello world, the cat sat on the mat. be brief."] * 20, vocab_size=300)
    tok.chat_template = opening + CHATML_TEMPLATE
    user = [{"role": "user", "content": "hello cat"}]
    system = [{"role": "system", "content": "be brief"}, *user]
    as_text = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in (user, system)]
    plain, from_user, from_system, text_user, text_system = encode_prompts(tok, ["hello cat", user, system, *as_text])
    assert text_user == from_user == plain and text_system == from_system
    assert text_user.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2  # the user turn and the assistant's
    assert (text_user[0] == tok.bos_token_id) == bool(opening)
