"""The likelihood objective: a head fit to reference completions (no reward), on cached teacher-forced features."""

import math
from pathlib import Path

import pytest
import torch

from lpo_train.losses import reference_nll

ROOT = Path(__file__).resolve().parents[1]


def test_reference_nll_hand_computed():
    head = torch.log(torch.full((1, 2, 2), 0.5))  # a uniform head over 2 choices, 2 reference tokens
    token = torch.log(torch.tensor([[[0.8, 0.2], [0.5, 0.1]]]))  # P(y_t | choice k)
    mask = torch.ones(1, 2)
    assert reference_nll(head, token, mask, "token").item() == pytest.approx(-(math.log(0.5) + math.log(0.3)))
    assert reference_nll(head, token, mask, "sequence").item() == pytest.approx(-math.log(0.5 * 0.4 + 0.5 * 0.02))
    assert reference_nll(head, token, torch.tensor([[1.0, 0.0]]), "token").item() == pytest.approx(-math.log(0.5))
    # a greedy choice (P = 1 for the reference token, the argmax) next to one that gives it 0.2: the head that
    # puts its mass on the greedy choice explains the reference better
    greedy_ref = torch.log(torch.tensor([[[1.0, 0.2], [1.0, 0.2]]]))
    on_greedy = torch.log(torch.tensor([[[0.99, 0.01], [0.99, 0.01]]]))
    assert reference_nll(on_greedy, greedy_ref, mask).item() < reference_nll(head, greedy_ref, mask).item()
    with pytest.raises(ValueError, match="form"):
        reference_nll(head, token, mask, "word")


@pytest.mark.slow
def test_the_shipped_recipe_learns_cold_arith_and_warm_stories_from_references_alone(toy_lm_folder, tmp_path,
                                                                                       monkeypatch):
    from lpo_train.train import parse_config
    from lpo_train.trainers import LPOTrainer

    config = parse_config(["--config", str(ROOT / "recipes" / "toy" / "lpo_tok_likelihood.yaml"), "--dataset_name",
                           str(ROOT / "recipes" / "toy" / "data" / "references.jsonl"), "--model_name_or_path",
                           str(toy_lm_folder), "--output_dir", str(tmp_path / "out"), "--logging_steps", "1"])
    trainer = LPOTrainer(args=config)
    assert trainer.reward_funcs == []  # no reward needed
    forwards = {"n": 0}
    body = trainer.lm.get_decoder()
    real = body.forward

    def counted(*a, **k):
        forwards["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(body, "forward", counted)
    trainer.train()
    nll = [e["nll/reference_per_token"] for e in trainer.state.log_history if "nll/reference_per_token" in e]
    assert nll[-1] < nll[0]
    import json

    rows = [json.loads(line) for line in (ROOT / "recipes" / "toy" / "data" / "references.jsonl").read_text().splitlines()]
    distinct = len({(str(r["prompt"]), r["completion"]) for r in rows})
    assert len(trainer.reference_cache) == distinct
    assert forwards["n"] <= distinct + 2  # one teacher-forced pass per reference over 4 epochs (+ input statistics)
    head = trainer.model.eval()
    mean_value = {}
    for family in ("arith", "story"):
        values = []
        for features in trainer.reference_cache.values():
            if features.family == family:
                with torch.no_grad():
                    values.append((head.log_probs(features.sample.hidden).exp() @ head.grid).mean().item())
        mean_value[family] = sum(values) / len(values)
    assert mean_value["arith"] < 0.35 < 0.5 < mean_value["story"], mean_value


def test_a_missing_reference_column_is_a_clear_error(toy_lm_folder, tmp_path):
    from lpo_train.trainers import LPOConfig, LPOTrainer

    config = LPOConfig(output_dir=str(tmp_path / "o"), dataset_name="toy", toy_families=["arith"],
                       toy_prompts_per_family=4, loss_type="likelihood", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="no column 'completion'.*set reference_column"):
        LPOTrainer(model=str(toy_lm_folder), args=config)
    with pytest.raises(ValueError, match="protocol 'online'"):
        LPOConfig(output_dir=str(tmp_path / "o"), loss_type="likelihood", protocol="offline", pairs_path="p.parquet")
