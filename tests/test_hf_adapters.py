import pytest
import torch
from transformers import LogitsProcessorList

from lpo_train.decoding import KLD, edt_temperature, entropy
from lpo_train.decoding.engine import encode_prompts
from lpo_train.decoding.hf import (
    AdaptiveDecoderLogitsProcessor,
    DynatempLogitsProcessor,
    EDTLogitsProcessor,
    RuleLogitsProcessor,
)
from lpo_train.decoding.stream import left_pad
from lpo_train.heads import AdaptiveDecoderHead

PROMPTS = ["What is the answer?", "hi"]


def _batch(tok, prompts):
    return left_pad(encode_prompts(tok, prompts), tok.pad_token_id)


def test_edt_processor_divides_each_row_by_its_temperature():
    torch.manual_seed(0)
    scores = torch.randn(3, 30) * torch.tensor([0.5, 2.0, 8.0])[:, None]
    out = EDTLogitsProcessor(T0=1.0, theta=1.0)(torch.zeros(3, 1, dtype=torch.long), scores)
    t = edt_temperature(entropy(scores), 1.0, 1.0)
    assert torch.allclose(out, scores / t[:, None])


def test_dynatemp_processor_hand_computed():
    scores = torch.zeros(1, 10)  # normalised entropy 1 -> T_max = 1.1
    out = DynatempLogitsProcessor(0.8, 0.3, 1.0)(None, scores)
    assert torch.allclose(out, scores / 1.1)
    peaked = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    h = entropy(peaked) / torch.log(torch.tensor(4.0))
    out = DynatempLogitsProcessor(0.8, 0.3, 2.0)(None, peaked)
    assert torch.allclose(out, peaked / (0.5 + 0.6 * h**2))


def test_greedy_rows_keep_only_the_argmax():
    out = EDTLogitsProcessor()(None, torch.tensor([[0.0, 1e4, 0.0]]))  # entropy 0 -> greedy
    assert out[0, 1] == 1e4 and torch.isinf(out[0, [0, 2]]).all()


def test_engine_only_rules_are_refused():
    with pytest.raises(ValueError, match="lpo-train engine"):
        RuleLogitsProcessor(KLD(["x"]))


def test_edt_inside_generate_uses_per_step_temperatures(tiny_lm):
    model, tok = tiny_lm
    ids, mask = _batch(tok, PROMPTS)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                         max_new_tokens=5, logits_processor=LogitsProcessorList([EDTLogitsProcessor(1.0, 1.0)]),
                         output_scores=True, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id)
    for raw, processed in zip(out.logits, out.scores):
        t = edt_temperature(entropy(raw.float()), 1.0, 1.0)
        assert torch.allclose(processed, raw / t[:, None], atol=1e-5)


def test_adaptive_head_inside_generate(tiny_lm):
    model, tok = tiny_lm
    ids, mask = _batch(tok, PROMPTS)
    greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                            pad_token_id=tok.pad_token_id)
    head = AdaptiveDecoderHead.for_model(model, level="sequence", grid=[0.0, 0.5, 1.0])
    with torch.no_grad():
        head.mlp[-1].bias[0] = 50.0  # always T = 0
    with AdaptiveDecoderLogitsProcessor(head, model) as proc:
        sampled = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 max_new_tokens=8, logits_processor=LogitsProcessorList([proc]),
                                 pad_token_id=tok.pad_token_id)
    assert torch.equal(sampled, greedy)

    token_head = AdaptiveDecoderHead.for_model(model, level="token", grid=[0.0, 0.5, 1.0])
    with torch.no_grad():
        token_head.mlp[-1].bias[1] = 50.0  # always T = 0.5
    with AdaptiveDecoderLogitsProcessor(token_head, model) as proc:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             max_new_tokens=4, logits_processor=LogitsProcessorList([proc]),
                             output_scores=True, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id)
        assert len(proc.chosen) == 4 and all((c == 1).all() for c in proc.chosen)
    for raw, processed in zip(out.logits, out.scores):
        assert torch.allclose(processed, raw / 0.5, atol=1e-5)
    assert not model.get_decoder()._forward_hooks  # the hook is removed


def test_adaptive_processor_rejects_a_foreign_head(tiny_lm):
    model, _ = tiny_lm
    from lpo_train import AdaptiveDecoderConfig

    with pytest.raises(ValueError, match="hidden size"):
        AdaptiveDecoderLogitsProcessor(AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=7)), model)


def test_rules_the_processors_cannot_carry_are_refused():
    from lpo_train.decoding import Rule, StepOutput

    class NeedsHistory(Rule):
        needs_history = True

    with pytest.raises(ValueError, match="lpo-train engine"):
        RuleLogitsProcessor(NeedsHistory())

    class ReturnsProbs(Rule):
        name = "probs"

        def step(self, inp):
            return StepOutput(temperature=inp.logits.new_ones(len(inp.logits)), probs=inp.logits.softmax(-1))

    with pytest.raises(ValueError, match="returned a distribution"):
        RuleLogitsProcessor(ReturnsProbs())(None, torch.zeros(1, 4))


def _sampling_head(model, level, grid, seed=0):
    torch.manual_seed(seed)
    head = AdaptiveDecoderHead.for_model(model, level=level, grid=grid)
    with torch.no_grad():
        head.mlp[-1].weight.zero_()  # the same near-uniform choice distribution at every hidden state
        head.mlp[-1].bias.copy_(torch.tensor([0.0, 0.3, -0.2]))
    return head


def _generate(model, tok, proc, ids, mask, steps, seed):
    torch.manual_seed(seed)
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                          max_new_tokens=steps, num_return_sequences=4, logits_processor=LogitsProcessorList([proc]),
                          output_scores=True, output_logits=True, return_dict_in_generate=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=None)


def test_sampled_token_level_head_tempers_each_row_by_its_own_choice(tiny_lm):
    model, tok = tiny_lm
    ids, mask = _batch(tok, PROMPTS)
    grid = torch.tensor([0.5, 1.0, 2.0])
    with AdaptiveDecoderLogitsProcessor(_sampling_head(model, "token", grid.tolist()), model, "sample") as proc:
        out = _generate(model, tok, proc, ids, mask, 5, seed=3)
        chosen = torch.stack(proc.chosen)  # [steps, rows]
        again = _generate(model, tok, proc, ids, mask, 5, seed=3)
        assert torch.equal(torch.stack(proc.chosen), chosen)  # repeatable under torch.manual_seed
        assert torch.equal(again.sequences, out.sequences)
    assert chosen.shape == (5, 8) and len(chosen.unique()) == 3  # every grid value drawn somewhere
    assert any(len(chosen[:, r].unique()) > 1 for r in range(8))  # rows change their choice between steps
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        assert torch.allclose(processed, raw / grid[chosen[step]][:, None], atol=1e-5)


def test_sampled_sequence_level_head_keeps_each_rows_choice(tiny_lm):
    model, tok = tiny_lm
    ids, mask = _batch(tok, PROMPTS)
    with AdaptiveDecoderLogitsProcessor(_sampling_head(model, "sequence", [0.5, 1.0, 2.0]), model, "sample") as proc:
        _generate(model, tok, proc, ids, mask, 4, seed=1)
        chosen = torch.stack(proc.chosen)
    assert (chosen == chosen[0]).all()  # decided at the first step, kept
    assert len(chosen[0].unique()) > 1  # sampled per row, not one choice for the batch


def test_every_generate_call_starts_the_head_again(tiny_lm):
    """A second call with another batch size and one-token prompts (no multi-token prefill to see) decides anew."""
    model, tok = tiny_lm
    head = AdaptiveDecoderHead.for_model(model, level="sequence", grid=[0.0, 0.5, 1.0])
    with AdaptiveDecoderLogitsProcessor(head, model) as proc:
        ids, mask = _batch(tok, PROMPTS)
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                       max_new_tokens=3, logits_processor=LogitsProcessorList([proc]), pad_token_id=tok.pad_token_id)
        one = torch.tensor([[5], [6], [7]])
        model.generate(input_ids=one, attention_mask=torch.ones_like(one), do_sample=True, temperature=1.0, top_k=0,
                       max_new_tokens=3, logits_processor=LogitsProcessorList([proc]), pad_token_id=tok.pad_token_id)
        assert len(proc.chosen) == 3 and all(c.shape == (3,) for c in proc.chosen)
