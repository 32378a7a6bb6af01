"""Task builders: the synthetic toy world, and real tasks for small real models.

Importing the package registers every task's built-in rewards, prompt datasets and model specs
(``lpo_train.registry``); rewards, the data layer and model loading read the registries, never a task module.
"""

from lpo_train.tasks import reasoning, smollm2_mix, toy, toy_lm  # noqa: F401 (registration)
