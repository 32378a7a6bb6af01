"""The objectives on tensors (hand computations, unbiasedness by exact enumeration or many draws) and the bandit
battery: the default objective reaches the expected-reward optimum where the sign-based ones do not."""

import itertools
import math

import pytest
import torch

from lpo_train.decoding.adaptive import stratified_choices, stratified_inclusion
from lpo_train.objectives import GroupDraw, SampleBatch, get_objective
from lpo_train.objectives.bandit import BanditCase, battery, bernoulli, check_objective, steady, training_defaults
from lpo_train.objectives.policy_gradient import policy_gradient_coefficients


def _batch(logps, rewards, group, coefficients=None, ref=0.0):
    logps = torch.tensor(logps, dtype=torch.float32, requires_grad=True)
    return SampleBatch(logps, torch.full_like(logps, ref), torch.tensor(rewards, dtype=torch.float64),
                       torch.tensor(group), max(group) + 1,
                       None if coefficients is None else torch.tensor(coefficients, dtype=torch.float64))


def test_regression_loss_is_the_mean_pair_loss_by_hand():
    beta = 0.5
    batch = _batch([-0.1, -1.2, -2.0, -0.7, -0.3], [1.0, 0.0, 0.5, 0.2, 0.2], [0, 0, 0, 1, 1])
    per_group, metrics = get_objective("lpo_regression").loss(batch, training_defaults(beta=beta))
    logps, rewards = batch.logps.tolist(), batch.rewards.tolist()
    for g, members in enumerate(([0, 1, 2], [3, 4])):  # 1/2 (e_i - e_j)^2 averaged over the group's pairs
        pairs = list(itertools.combinations(members, 2))
        expected = sum(0.5 * ((logps[i] - rewards[i] / beta) - (logps[j] - rewards[j] / beta)) ** 2
                       for i, j in pairs) / len(pairs)
        assert per_group[g].item() == pytest.approx(expected, rel=1e-5)
    # TRL's metrics over the pairs whose rewards differ (group 1 ties): (0,1), (0,2), (2,1)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * (logps[0] + logps[0] + logps[2]) / 3, rel=1e-5)
    assert metrics["rewards/accuracies"].item() == pytest.approx(2 / 3)  # -0.1 > -1.2, -0.1 > -2.0, not -2.0 > -1.2


def test_regression_gradient_vanishes_at_the_boltzmann_head():
    # log P(k) = mu_k / beta + c is the minimiser: with expected rewards, every pair's residual is 0
    beta, mu = 0.25, [0.9, 0.5, 0.3]
    logps = torch.log_softmax(torch.tensor(mu) / beta, 0).tolist()
    batch = _batch(logps, mu, [0, 0, 0])
    per_group, _ = get_objective("lpo_regression").loss(batch, training_defaults(beta=beta))
    per_group.sum().backward()
    assert per_group.item() == pytest.approx(0.0, abs=1e-10) and batch.logps.grad.abs().max() < 1e-5


def test_policy_gradient_coefficients_by_hand():
    # i.i.d. draws: w_i (r_i - mean of the others) / n, w_i = P_head / q
    draw = GroupDraw([1.0, 0.0, float("nan"), 0.5], head_logps=[math.log(0.5), math.log(0.2), 0.0, math.log(0.3)],
                     behaviour_logps=[math.log(0.4), math.log(0.25), 0.0, math.log(0.35)])
    samples, coef = policy_gradient_coefficients(draw)
    assert samples == [0, 1, 3]
    expected = [0.5 / 0.4 * (1.0 - 0.25) / 3, 0.2 / 0.25 * (0.0 - 0.75) / 3, 0.3 / 0.35 * (0.5 - 0.5) / 3]
    assert coef == pytest.approx(expected)
    # stratified N >= K: P(k) (rbar_k - mean of rbar) / m_k
    draw = GroupDraw([1.0, 0.0, 0.4, 0.6], design="stratified", choices=[0, 1, 2, 0], head_probs=[0.5, 0.3, 0.2])
    _, coef = policy_gradient_coefficients(draw)
    rbar, b = [0.8, 0.0, 0.4], 0.4
    assert coef == pytest.approx([0.5 * (rbar[0] - b) / 2, 0.3 * (0 - b), 0.2 * (0.4 - b), 0.5 * (rbar[0] - b) / 2])
    # stratified N < K: P(k) r / q_k
    draw = GroupDraw([1.0, 0.5], design="stratified", choices=[2, 0], head_probs=[0.5, 0.3, 0.2],
                     inclusion=[0.9, 0.6, 0.4])
    assert policy_gradient_coefficients(draw)[1] == pytest.approx([0.2 * 1.0 / 0.4, 0.5 * 0.5 / 0.9])


def test_stratified_priority_weights_are_unbiased():
    # sum over the drawn k of P(k) f(k) / q_k estimates E_head[f] = sum_k P(k) f(k) (N = 2 of K = 4)
    probs = torch.tensor([[0.55, 0.25, 0.15, 0.05]], dtype=torch.float64)
    f = torch.tensor([1.0, -2.0, 3.0, 10.0], dtype=torch.float64)
    draws = 20000
    seeds = torch.arange(draws, dtype=torch.long) * 7919 + 11
    rows = probs.expand(draws * 2, -1)
    chosen = stratified_choices(rows, seeds.repeat_interleave(2), torch.arange(2).repeat(draws)).view(draws, 2)
    incl = stratified_inclusion(probs.expand(draws, -1), seeds, 2)
    estimate = (probs[0][chosen] * f[chosen] / incl.gather(1, chosen)).sum(1)
    truth = (probs[0] * f).sum().item()
    assert chosen[:, 0].ne(chosen[:, 1]).all()
    assert estimate.mean().item() == pytest.approx(truth, abs=4 * estimate.std().item() / math.sqrt(draws))
    for k in range(4):  # each inclusion weight is right: E[1{k drawn} / q_k] = 1
        ratio = (chosen == k).any(1).double() / incl[:, k]
        assert ratio.mean().item() == pytest.approx(1.0, abs=4 * ratio.std().item() / math.sqrt(draws))


def test_group_relative_coefficients_give_the_exact_gradient_in_expectation():
    # i.i.d. draws from a uniform mixture: enumerate every draw of N = 2 exactly
    p, eps, mu = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), 0.3, [0.2, 1.0, 0.5]
    q = (1 - eps) * p + eps / 3
    expected = torch.zeros(3, dtype=torch.float64)  # E[sum_i c_i grad log P(k_i)] wrt the logits
    for a, b in itertools.product(range(3), repeat=2):
        draw = GroupDraw([mu[a], mu[b]], head_logps=[p[a].log().item(), p[b].log().item()],
                         behaviour_logps=[q[a].log().item(), q[b].log().item()])
        _, coef = policy_gradient_coefficients(draw)
        for k, c in zip((a, b), coef):
            expected += q[a] * q[b] * c * (torch.eye(3, dtype=torch.float64)[k] - p)
    truth = p * (torch.tensor(mu, dtype=torch.float64) - (p * torch.tensor(mu, dtype=torch.float64)).sum())
    assert torch.allclose(expected, truth, atol=1e-12)


def test_selection_other_than_sample_is_a_config_error(tmp_path):
    from lpo_train.trainers import LPOConfig

    for selection in ("argmax", "mixture"):
        with pytest.raises(ValueError, match="selection 'sample'"):
            LPOConfig(output_dir=str(tmp_path), selection=selection, report_to="none")
    with pytest.raises(ValueError, match="pair_mode 'best_worst' would select pairs"):
        LPOConfig(output_dir=str(tmp_path), pair_mode="best_worst", report_to="none")
    with pytest.raises(ValueError, match="top_k"):
        LPOConfig(output_dir=str(tmp_path), loss_type="likelihood", top_k=5, report_to="none")
    assert LPOConfig(output_dir=str(tmp_path), loss_type="lpo", report_to="none").pair_mode == "best_worst"


def test_default_objective_reaches_the_optimum_on_the_whole_battery():
    for case in battery():
        result = check_objective(case, steps=300)
        assert result.passed, (case.name, result.probs, result.optimum)


def test_default_objective_converges_to_the_boltzmann_head_of_expected_rewards():
    case = battery()[0]  # the design trap: mu = (0.5, 0.9, 0.3); beta = 0.1 gives P = softmax(mu / 0.1)
    result = check_objective(case, steps=400)
    target = torch.softmax(case.means[0] / 0.1, 0)
    assert result.probs[0] == pytest.approx(target.tolist(), abs=0.03)
    result = check_objective(case, steps=400, beta=0.5)  # a larger beta: a softer head, same argmax
    assert result.probs[0] == pytest.approx(torch.softmax(case.means[0] / 0.5, 0).tolist(), abs=0.05)


@pytest.mark.parametrize("exploration", ["none", "uniform_mix"])
def test_default_objective_under_other_explorations(exploration):
    for case in (battery()[0], battery()[3]):
        assert check_objective(case, steps=300, exploration=exploration).passed


def test_paper_eq10_falls_into_the_design_trap_and_the_check_says_so():
    result = check_objective(battery()[0], "lpo", steps=300)
    assert not result.passed and result.argmax == [0]  # T0 is never rejected: the head ends on it


def test_group_relative_reaches_the_optimum_where_group_scaling_does_not():
    near_tie = BanditCase("noisy", [[steady(0.5), bernoulli(0.5, 1.2, 0.0), steady(0.1)]], 3)
    assert check_objective(near_tie, "group_relative", steps=300).passed
    for exploration in ("none", "uniform_mix"):
        assert check_objective(battery()[0], "group_relative", steps=300, exploration=exploration).passed
    assert check_objective(battery()[1], "group_relative", steps=300).passed  # stratified N < K: priority weights


def test_check_objective_command_on_a_user_spec(tmp_path):
    import json
    import subprocess
    import sys

    spec = {"num_generations": 3, "contexts": [[{"values": [0.5]}, {"values": [1.0, 0.0], "probs": [0.9, 0.1]},
                                                {"values": [0.3]}]]}
    (tmp_path / "bandit.json").write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-m", "lpo_train.cli", "check-objective", "--bandit",
                          str(tmp_path / "bandit.json"), "--loss_type", "lpo", "lpo_regression", "--steps", "200",
                          "--output", str(tmp_path / "check.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr  # lpo fails the trap: a non-zero exit
    report = json.loads((tmp_path / "check.json").read_text())
    by_loss = {r["objective"]: r for r in report["results"]}
    assert by_loss["lpo_regression"]["passed"] and not by_loss["lpo"]["passed"]
    assert "FAIL" in out.stdout and "lpo_regression" in out.stdout
