"""A step's training units as batches and the loss on them: collate the traced features, score them with the
head (the objective's ``PairBatch`` / ``SampleBatch``), and call the objective (``lpo_train.objectives``)."""

from __future__ import annotations

import torch

from lpo_train.losses import choice_logps, latent_logratio, reference_nll, uniform_reference_logps
from lpo_train.objectives import PairBatch, SampleBatch
from lpo_train.pairs import GroupFeatures, SampleFeatures
from lpo_train.trainers.lpo_io import pad
from lpo_train.trainers.lpo_joint import word_batch, zero_loss
from lpo_train.trainers.lpo_metrics import pair_choice_metrics


def collate(trainer, features: list, total_units: float) -> dict:
    """One batch of training units: pairs (``PairFeatures``: chosen / rejected sides), groups
    (``GroupFeatures``: their samples flattened, ``group`` numbering each one's unit) or references
    (``SampleFeatures``). ``total_units``: the step's units per process (``_global_count``)."""
    device = trainer.accelerator.device
    features = sorted(features, key=lambda f: str(f.family))  # each family's rows contiguous (grad_norm/<f>)
    out = {"num_units_in_step": total_units, "num_units": len(features), "family": [f.family for f in features]}
    if not features:
        return out
    if isinstance(features[0], GroupFeatures):
        out["family"] = [f.family for f in features for _ in f.sides]
        out["group"] = torch.tensor([g for g, f in enumerate(features) for _ in f.sides], device=device)
        out["group_rewards"] = torch.tensor([r for f in features for r in f.rewards], dtype=torch.float64,
                                            device=device)
        if features[0].coefficients is not None:
            out["coefficients"] = torch.tensor([c for f in features for c in f.coefficients], dtype=torch.float64,
                                               device=device)
        sides = {"sample": [s for f in features for s in f.sides]}
    elif isinstance(features[0], SampleFeatures):
        sides = {"sample": [f.sample for f in features]}
    else:
        sides = {side: [getattr(f, side) for f in features] for side in ("chosen", "rejected")}
        for side in sides:
            out[f"{side}_reward"] = torch.tensor([getattr(f, f"{side}_reward") for f in features],
                                                 dtype=torch.float64, device=device)
    for side, items in sides.items():
        out[f"{side}_hidden"] = pad([x.hidden for x in items]).to(device)
        out[f"{side}_choices"] = pad([x.choices for x in items], -1).to(device)
        out[f"{side}_mask"] = pad([torch.ones(len(x.hidden)) for x in items]).to(device)
        if items[0].token_logps is not None:
            out[f"{side}_token_logps"] = pad([x.token_logps for x in items], 0.0).to(device)
            out[f"{side}_token_mask"] = pad([torch.ones(len(x.token_logps)) for x in items]).to(device)
    if trainer.args.use_peft:  # chosen rows then rejected rows, teacher-forced in one LM forward
        out["words"] = word_batch([f.chosen for f in features] + [f.rejected for f in features],
                                  trainer.word_pad_id, device)
    return out


def side_logps(trainer, model, inputs, side, logits=None):
    logits = model(inputs[f"{side}_hidden"]) if logits is None else logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [P, T, K]
    return log_probs, choice_logps(log_probs, inputs[f"{side}_choices"], inputs[f"{side}_mask"])


def reference_logps(trainer, inputs, side, k: int, logps: torch.Tensor) -> torch.Tensor:
    if trainer.args.choice_reference == "uniform":
        return uniform_reference_logps(inputs[f"{side}_mask"], k)
    return torch.zeros_like(logps)  # the paper's literal Eq. 10: no reference term


def latent_ratio(trainer, inputs, side, log_probs) -> torch.Tensor:
    """Eq. 11's log P'(y) / P'_ref(y) of one side, the choice marginalised."""
    token_logps = inputs[f"{side}_token_logps"]
    head_lp = log_probs if trainer.args.level == "token" else log_probs[:, :1].expand(-1, token_logps.shape[1], -1)
    return latent_logratio(head_lp, token_logps, inputs[f"{side}_token_mask"], trainer.args.latent_form)


def objective_batch(trainer, model, inputs):
    """The head's scores of a collated batch, as the objective's batch type (``PairBatch``/``SampleBatch``)."""
    if trainer.objective.unit == "group":
        log_probs, logps = side_logps(trainer, model, inputs, "sample")
        return SampleBatch(logps, reference_logps(trainer, inputs, "sample", log_probs.shape[-1], logps),
                           inputs["group_rewards"], inputs["group"], inputs["num_units"],
                           inputs.get("coefficients"))
    word, logits = {}, {}
    if trainer.args.use_peft:  # Eq. 9's word terms: the LM teacher-forced on both responses, adapter on and off
        (logits["chosen"], logits["rejected"]), (policy, reference) = model(
            inputs["chosen_hidden"], inputs["rejected_hidden"], words=inputs["words"])
        p, ratio = len(inputs["chosen_hidden"]), policy - reference
        word = {"chosen_word": ratio[:p], "rejected_word": ratio[p:]}
        trainer._record({"word_logps/chosen": policy[:p].mean().detach(),
                      "word_logps/rejected": policy[p:].mean().detach()})
    lp_c, logp_c = side_logps(trainer, model, inputs, "chosen", logits.get("chosen"))
    lp_r, logp_r = side_logps(trainer, model, inputs, "rejected", logits.get("rejected"))
    k = lp_c.shape[-1]
    latent = {}
    if trainer.objective.name == "lpo_latent":
        latent = {"chosen_latent": latent_ratio(trainer, inputs, "chosen", lp_c),
                  "rejected_latent": latent_ratio(trainer, inputs, "rejected", lp_r)}
    if trainer.args.protocol == "offline":  # the choice metrics of the stored pairs, and of the head on them
        with torch.no_grad():
            trainer._record(pair_choice_metrics(inputs, lp_c, lp_r, trainer.bare_head().config.grid))
    return PairBatch(logp_c, logp_r, reference_logps(trainer, inputs, "chosen", k, logp_c),
                     reference_logps(trainer, inputs, "rejected", k, logp_r), inputs["chosen_reward"],
                     inputs["rejected_reward"], **latent, **word)


def compute_loss(trainer, model, inputs) -> torch.Tensor:
    """The step's share of the loss in this micro-batch: the objective's per-unit losses summed and divided by the
    step's units per process (``num_units_in_step``), its metrics recorded."""
    if inputs["num_units"] == 0:  # keep every rank's graph identical (DDP) when no unit was formed
        if trainer.args.use_peft:  # a forward through the LM too: ZeRO-3 gathers its weights collectively
            return zero_loss(model, trainer.bare_head().config.hidden_size, trainer.word_pad_id,
                             trainer.accelerator.device)
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
    if trainer.objective.unit == "reference":
        return likelihood_loss(trainer, model, inputs)
    per_unit, metrics = trainer.objective.loss(objective_batch(trainer, model, inputs), trainer.args)
    trainer._record({k: v.detach() for k, v in metrics.items()})
    return per_unit.sum() / inputs["num_units_in_step"]


def likelihood_loss(trainer, model, inputs) -> torch.Tensor:
    log_probs = torch.log_softmax(model(inputs["sample_hidden"]).float(), dim=-1)
    mask = inputs["sample_token_mask"]
    # a sequence-level head's one decision (hidden [B, 1, H]) against every reference token: the sequence form
    per_ref = reference_nll(log_probs, inputs["sample_token_logps"], mask, trainer.args.level)
    with torch.no_grad():
        trainer._record({"nll/reference_per_token": per_ref.sum() / mask.sum(), "num_references": float(len(per_ref))})
    return per_ref.sum() / inputs["num_units_in_step"]
