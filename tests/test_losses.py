import math

import pytest
import torch

from lpo_train.losses import (
    choice_logps,
    latent_logratio,
    lpo_joint_loss,
    lpo_latent_loss,
    lpo_loss,
    nll_chosen_loss,
)


def test_lpo_loss_hand_computed():
    c, r = torch.tensor([-0.5, -2.0, -1.0]), torch.tensor([-1.5, -1.0, -1.0])
    out = lpo_loss(c, r, beta=0.5)
    expected = [-math.log(1 / (1 + math.exp(-0.5 * d))) for d in (1.0, -1.0, 0.0)]
    assert out.tolist() == pytest.approx(expected)
    assert out[2].item() == pytest.approx(math.log(2))


def test_choice_logps_sums_over_response_tokens_only():
    head = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    choices = torch.tensor([[1, 1, -1]])
    mask = torch.tensor([[1, 1, 0]])
    assert choice_logps(head, choices, mask).item() == pytest.approx(math.log(0.5) + math.log(0.75))


def test_uniform_head_frozen_lm_gives_ln2_for_every_loss():
    torch.manual_seed(0)
    b, t, k = 4, 5, 3
    head = torch.full((b, t, k), -math.log(k))
    token_logps = torch.log_softmax(torch.randn(b, t, k), -1)
    mask = torch.ones(b, t)
    c = choice_logps(head[:2], torch.randint(0, k, (2, t)), mask[:2])
    r = choice_logps(head[2:], torch.randint(0, k, (2, t)), mask[2:])
    assert lpo_loss(c, r, 1.0).tolist() == pytest.approx([math.log(2)] * 2)
    for form in ("token", "sequence"):
        ratio = latent_logratio(head, token_logps, mask, form=form)
        assert ratio.abs().max() < 1e-5  # uniform policy = uniform reference
        assert lpo_latent_loss(ratio[:2], ratio[2:], 1.0).tolist() == pytest.approx([math.log(2)] * 2)


def test_latent_logratio_hand_computed():
    p_tau = torch.tensor([0.2, 0.8])
    p_y = torch.tensor([[0.5, 0.1], [0.3, 0.6]])  # [T, K]
    head = p_tau.log().expand(1, 2, 2)
    token = p_y.log()[None]
    mask = torch.tensor([[1, 1]])
    by_hand_token = sum(math.log((p_tau * p_y[t]).sum() / (0.5 * p_y[t]).sum()) for t in range(2))
    assert latent_logratio(head, token, mask).item() == pytest.approx(by_hand_token)
    prod = p_y.prod(0)
    by_hand_seq = math.log((p_tau * prod).sum() / (0.5 * prod).sum())
    assert latent_logratio(head, token, mask, form="sequence").item() == pytest.approx(by_hand_seq)
    # a greedy choice (tau = 0) contributes log 0 = -inf where the token is not the argmax
    token_inf = torch.tensor([[[0.0, math.log(0.1)], [float("-inf"), math.log(0.6)]]])
    assert torch.isfinite(latent_logratio(head, token_inf, mask))
    with pytest.raises(ValueError, match="form"):
        latent_logratio(head, token, mask, form="chunk")


def test_joint_loss_word_term_gives_the_head_no_gradient():
    c = torch.tensor([-1.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    zero = torch.zeros(1)
    joint = lpo_joint_loss(c, r, 0.3, zero, zero)
    assert torch.allclose(joint, lpo_loss(c, r, 0.3))
    assert lpo_joint_loss(c, r, 0.3, torch.tensor([0.5]), torch.tensor([0.1])).item() == pytest.approx(
        -math.log(torch.sigmoid(torch.tensor(0.3 * (0.4 + 1.0))).item()))
    with pytest.raises(ValueError, match="both"):
        lpo_joint_loss(c, r, 0.3, zero, None)


def test_joint_loss_separate_word_beta_by_hand():
    # choice log-ratio margin (-1) - (-2) = 1 at beta 0.3; word margin 0.5 - 0.1 = 0.4 at word_beta 2
    c, r = torch.tensor([-1.0]), torch.tensor([-2.0])
    loss = lpo_joint_loss(c, r, 0.3, torch.tensor([0.5]), torch.tensor([0.1]), word_beta=2.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-(2.0 * 0.4 + 0.3 * 1.0))))
    # with uniform references over 3 and 5 decisions (K = 6), the choice margin is (-1 + 3 ln 6) - (-2 + 5 ln 6)
    ref_c, ref_r = torch.tensor([-3 * math.log(6)]), torch.tensor([-5 * math.log(6)])
    loss = lpo_joint_loss(c, r, 0.3, torch.tensor([0.5]), torch.tensor([0.1]), ref_c, ref_r, word_beta=2.0)
    margin = 2.0 * 0.4 + 0.3 * ((-1 + 3 * math.log(6)) - (-2 + 5 * math.log(6)))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-margin)), rel=1e-6)


def test_one_step_raises_chosen_and_lowers_rejected():
    from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead

    torch.manual_seed(0)
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=8, grid=[0.0, 0.5, 1.0]))
    h_c, h_r = torch.randn(1, 8), torch.randn(1, 8)
    tau_c, tau_r = torch.tensor([2]), torch.tensor([0])
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    before_c = head.log_probs(h_c)[0, 2].item()
    before_r = head.log_probs(h_r)[0, 0].item()
    loss = lpo_loss(head.log_probs(h_c).gather(-1, tau_c[:, None]).squeeze(-1),
                    head.log_probs(h_r).gather(-1, tau_r[:, None]).squeeze(-1), beta=1.0).mean()
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    opt.step()
    assert head.log_probs(h_c)[0, 2].item() > before_c
    assert head.log_probs(h_r)[0, 0].item() < before_r


def test_nll_chosen():
    assert nll_chosen_loss(torch.tensor([-0.3, -2.0])).tolist() == pytest.approx([0.3, 2.0])
