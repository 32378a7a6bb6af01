"""Write recipes/toy/data/references.jsonl: toy-world prompts with a reference completion each, for the
likelihood objective's recipe (recipes/toy/lpo_tok_likelihood.yaml). The references come from the small toy LM
itself: greedy answers to arith prompts (where the reference is the argmax token), T = 1 samples for
story prompts (where it is not), so a head fit to them should learn to be cold on arith, warm on stories.

    python scripts/make_toy_references.py
"""

from pathlib import Path

from lpo_train.decoding import FixedTemperature, SamplingParams, generate
from lpo_train.tasks.toy import make_prompts
from lpo_train.tasks.toy_lm import load_toy_lm
from lpo_train.utils.io import write_json_lines


def main() -> None:
    model, tok = load_toy_lm("small", 0)
    rows = []
    for family, temperature in (("arith", 0.0), ("story", 1.0)):
        prompts = make_prompts([family], 16, seed=7)
        traces = generate(model, tok, [r["prompt"] for r in prompts], FixedTemperature(temperature),
                          SamplingParams(max_new_tokens=40, seed=1))
        rows += [{"prompt": r["prompt"], "completion": t.text, "family": family} for r, t in zip(prompts, traces)]
    out = write_json_lines(Path(__file__).resolve().parents[1] / "recipes" / "toy" / "data" / "references.jsonl", rows)
    print(f"{len(rows)} references -> {out}")


if __name__ == "__main__":
    main()
