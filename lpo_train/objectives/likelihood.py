"""``likelihood``: no reward; the head fits reference completions (in the manner of AutoDeco) by maximising
their likelihood under the head's mixture over the grid (``losses.reference_nll``). Its fixed point is the
maximum-likelihood mixture of the references: the head that makes the references most probable, whatever
any reward says."""

from __future__ import annotations

from lpo_train.objectives.base import Objective


class Likelihood(Objective):
    name = "likelihood"
    unit = "reference"
    estimand = "maximum likelihood of the reference completions under the head's mixture (no reward)"

    def check_config(self, args) -> None:
        if getattr(args, "protocol", "online") == "offline":
            raise ValueError("loss_type 'likelihood' trains on reference completions, not sampled pairs: use protocol "
                             "'online' (the references' teacher-forced features are computed once and cached).")
        truncation = [name for name, off in (("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))
                      if getattr(args, name, off) != off]
        if truncation:
            raise ValueError(f"loss_type 'likelihood' scores reference tokens under every grid value; with "
                             f"{', '.join(truncation)} set, a reference token outside every truncated distribution has "
                             "probability 0 (an infinite loss that turns the head into NaN). Unset "
                             f"{' and '.join(truncation)} for this objective.")

    def units(self, draws, args):
        raise ValueError("loss_type 'likelihood' has no sampled units: it trains on the dataset's references.")


LIKELIHOOD = Likelihood()
