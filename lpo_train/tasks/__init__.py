"""Task builders: the synthetic toy world, and real tasks for small real models.

Importing the package registers every task's built-in rewards and model specs
(``lpo_train.registry``); rewards and model loading read the registry, never a task module.
"""

from lpo_train.tasks import reasoning, smollm2_mix, toy  # noqa: F401 (registration)
from lpo_train.tasks.toy_lm import register_model_specs

register_model_specs()
