"""A user's own reward file, imported by dotted path in the tests."""


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def sometimes_none(prompts, completions, **kwargs):
    return [None if "skip" in c else 1.0 for c in completions]


NOT_CALLABLE = 3
