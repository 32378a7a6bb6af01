"""A user's own reward file, imported by dotted path in the tests."""


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def sometimes_none(prompts, completions, **kwargs):
    return [None if "skip" in c else 1.0 for c in completions]


NOT_CALLABLE = 3


def tied_on_rank_one(prompts, completions, **kwargs):
    """Length on rank 0, a constant on rank 1: every group of rank 1 ties, so that rank forms no pair while
    rank 0 does (the multi-process "one rank without pairs" case)."""
    import os

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    return [0.5 if rank == 1 else float(len(c)) for c in completions]
