"""The bad inputs outside the data layer: a user error at the command line prints its message alone (exit
status 2), --debug / LPO_TRAIN_DEBUG=1 give the traceback, an error the project did not raise on purpose keeps
its traceback; output folders are checked before any work; a head's missing base model is named with its source."""

import subprocess
import sys

import pytest

from lpo_train.cli import main
from lpo_train.errors import UserError, is_user_error


def test_a_config_error_prints_its_message_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv("LPO_TRAIN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--method", "beam"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lpo-train generate: error: method must be one of ['args', 'base'")
    assert "Traceback" not in err and "--debug" in err


def test_debug_flag_or_variable_raises_with_the_traceback(monkeypatch):
    monkeypatch.delenv("LPO_TRAIN_DEBUG", raising=False)
    with pytest.raises(ValueError, match="method must be one of"):
        main(["--debug", "generate", "--method", "beam"])
    monkeypatch.setenv("LPO_TRAIN_DEBUG", "1")
    with pytest.raises(ValueError, match="method must be one of"):
        main(["generate", "--method", "beam"])


def test_generate_refuses_an_unwritable_output_before_loading_anything(tmp_path, capsys, monkeypatch):
    """The model and the prompt file do not exist: reaching either would be another error."""
    monkeypatch.delenv("LPO_TRAIN_DEBUG", raising=False)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--method", "base", "--model_name_or_path", str(tmp_path / "no_model"),
              "--dataset_name", str(tmp_path / "none.jsonl"), "--output_file", str(tmp_path / "a_file" / "out.jsonl")])
    assert exit_.value.code == 2
    assert "a_file/out.jsonl cannot be written: " in capsys.readouterr().err


def test_train_value_refuses_to_replace_a_trained_model(tmp_path, capsys, monkeypatch):
    """As `train` does; --overwrite_output_dir true gets past the check (to the missing model, here)."""
    monkeypatch.delenv("LPO_TRAIN_DEBUG", raising=False)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "model.safetensors").write_bytes(b"")
    command = ["train-value", "explicit", "--model_name_or_path", str(tmp_path / "no_model"),
               "--output_dir", str(tmp_path / "v"), "--use_cpu", "true", "--report_to", "none"]
    with pytest.raises(SystemExit):
        main(command)
    assert "already holds another run (model.safetensors). Set --overwrite_output_dir true" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(command + ["--overwrite_output_dir", "true"])
    assert "no_model' is not a local folder" in capsys.readouterr().err


def test_which_errors_are_user_errors(tmp_path):
    from lpo_train.guidance.run import GenerateConfig
    from lpo_train.utils.io import write_json_lines

    with pytest.raises(ValueError) as check:  # a check's own raise
        GenerateConfig(method="beam")
    assert is_user_error(check.value)
    with pytest.raises(UserError) as own:  # raised anywhere, e.g. a user's reward module
        raise UserError("the reward file needs a 'score' column")
    assert is_user_error(own.value)
    with pytest.raises(TypeError) as accident:  # a TypeError inside lpo_train that no check raised: a bug
        write_json_lines(tmp_path / "x.jsonl", 5)
    assert not is_user_error(accident.value)
    with pytest.raises(ValueError) as library:  # raised outside lpo_train
        int("five")
    assert not is_user_error(library.value)


def test_the_console_command_prints_the_message_alone():
    """The real process: exit status 2 and one message; with --debug the traceback (exit status 1)."""
    command = [sys.executable, "-m", "lpo_train.cli", "generate", "--method", "beam"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "method must be one of" in out.stderr and "Traceback" not in out.stderr
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "method must be one of" in debug.stderr


def test_a_head_whose_base_folder_was_deleted_says_where_the_path_came_from(tiny_lm, tiny_lm_path, tmp_path):
    import shutil

    from lpo_train.adaptive_model import AdaptiveDecoderForCausalLM
    from lpo_train.heads import AdaptiveDecoderHead

    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    AdaptiveDecoderHead.for_model(model, base_model=str(tmp_path / "base")).save_pretrained(tmp_path / "head")
    shutil.rmtree(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match=r"names its base model '.*base' in its config.json \(base_model, "
                                                r"recorded when it was trained\).*Give the base model explicitly"):
        AdaptiveDecoderForCausalLM.from_pretrained(tmp_path / "head")
    given = AdaptiveDecoderForCausalLM.from_pretrained(tmp_path / "head", base_model=str(tiny_lm_path))
    assert given.model.config.hidden_size == model.config.hidden_size
