"""LPO's behaviour on the toy world with the shipped recipe and the defaults (shared/DESIGN.md: each
method has a behavioural test): the head learns low T where greedy wins and high T where it repeats,
and online LPO keeps forming pairs to the end (exploration)."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["lpo_regression", "lpo", "group_relative"])
def test_online_lpo_sends_arith_cold_and_story_hot_and_keeps_pairing(toy_lm_folder, tmp_path, loss_type):
    from lpo_train.decoding.engine import encode_prompts
    from lpo_train.tasks.toy import make_prompts
    from lpo_train.train import parse_config
    from lpo_train.trainers import LPOTrainer

    config = parse_config(["--config", str(ROOT / "recipes" / "toy" / "lpo_seq.yaml"), "--model_name_or_path",
                           str(toy_lm_folder), "--output_dir", str(tmp_path / "out"), "--save_strategy", "no",
                           "--logging_steps", "1", "--loss_type", loss_type]
                          + (["--beta", "0.1"] if loss_type == "lpo_regression" else []))
    trainer = LPOTrainer(args=config)
    trainer.train()
    unit = "num_pairs" if loss_type == "lpo" else "num_comparisons"
    logs = [e for e in trainer.state.log_history if unit in e]
    # exploration: the last steps still form pairs (the story family's rewards always differ across T)
    assert len(logs) > 8 and all(e[unit] > 0 and e["frac_prompts_tied"] < 1.0 for e in logs[-4:])
    head, lm, tok = trainer.model.eval(), trainer.lm, trainer.tokenizer
    chosen = {}
    for family in ("arith", "story"):
        rows = make_prompts([family], 16, seed=4242)  # held-out prompts
        with torch.no_grad():
            values = []
            for ids in encode_prompts(tok, [r["prompt"] for r in rows]):
                hidden = lm.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
                values.append(head.grid[head.log_probs(hidden).argmax(-1)].item())
        chosen[family] = sum(values) / len(values)
    assert chosen["arith"] <= 0.2 and chosen["story"] >= 0.8, chosen
