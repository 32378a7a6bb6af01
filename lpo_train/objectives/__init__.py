"""The head's training objectives, one module each, behind one interface (``Objective``).

An objective turns a step's scored groups (``GroupDraw``: a prompt's N samples, their rewards and how their
choices were drawn) into training units, and those units' head scores into a loss. The trainer, the offline
pair builder and the bandit check (``lpo_train.objectives.bandit``) all go through it, so what the bandit
check measures is what training optimises. docs/objectives.md states and derives what head each one converges
to.
"""

from __future__ import annotations

from lpo_train.objectives.base import GroupDraw, Objective, PairBatch, SampleBatch  # noqa: F401
from lpo_train.objectives.likelihood import LIKELIHOOD  # noqa: F401
from lpo_train.objectives.pairwise import EQ10, JOINT, LATENT, NLL_CHOSEN  # noqa: F401
from lpo_train.objectives.policy_gradient import GROUP_RELATIVE  # noqa: F401
from lpo_train.objectives.regression import REGRESSION  # noqa: F401

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (REGRESSION, EQ10, LATENT, JOINT, NLL_CHOSEN,
                                                         GROUP_RELATIVE, LIKELIHOOD)}
DEFAULT_OBJECTIVE = REGRESSION.name


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"loss_type must be one of {tuple(OBJECTIVES)}, got {name!r}.")
    return OBJECTIVES[name]
