"""Write recipes/smollm2-135m/data/references.jsonl: the ``smollm2_mix`` train split (its default families) with one
reference completion per prompt, for the likelihood objective on SmolLM2 (``scripts/replicate_smollm2.py
--objectives ... likelihood``). The references are correct answers written out, not model samples (so no
temperature is built into them): arith "The answer is 12.", capital "The capital of Peru is Lima.", copy the
sentence itself, pick and pick_fewshot one item of the category (12 listed here, all in the reward's lexicon)
drawn at random per prompt ("Giraffe."), as the prompt asks.

    python scripts/make_smollm2_references.py
"""

import random
import re
from pathlib import Path

from lpo_train.tasks.smollm2_mix import LEXICONS, PICK_FAMILIES, make_rows
from lpo_train.utils.io import write_json_lines

ITEMS = {  # one-word items of each pick category (every one is in the reward's lexicon; checked below)
    "animals": "giraffe zebra otter penguin koala falcon lizard dolphin badger camel owl rabbit",
    "fruits": "mango apricot plum cherry lychee papaya fig kiwi peach pear lime banana",
    "vegetables": "carrot spinach leek radish kale turnip celery potato cabbage onion okra broccoli",
    "colors": "teal crimson amber violet maroon cyan lavender olive navy gold beige coral",
    "countries": "peru kenya norway japan chile nepal egypt canada portugal vietnam iceland ghana",
    "sports": "tennis rugby cricket archery fencing rowing judo golf surfing skiing hockey boxing",
    "instruments": "cello flute harp banjo oboe sitar tuba violin ukulele trumpet piano accordion",
}
assert all(w in LEXICONS[c] for c, words in ITEMS.items() for w in words.split())


def reference(row: dict, rng: random.Random) -> str:
    content = row["prompt"][-1]["content"]
    if row["family"] == "arith":
        return f"The answer is {row['answer']}."
    if row["family"] == "capital":
        country = re.search(r"of (.+?)[?.]$", content).group(1)
        return f"The capital of {country} is {row['answer']}."
    if row["family"] == "copy":
        return row["answer"]
    if row["family"] in PICK_FAMILIES:
        return rng.choice(ITEMS[row["answer"]].split()).capitalize() + "."
    raise ValueError(f"No reference for family {row['family']!r}.")


def main() -> None:
    rng = random.Random("smollm2-references")
    rows = [{**r, "completion": reference(r, rng)} for r in make_rows("smollm2_mix")]
    out = write_json_lines(Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "data" / "references.jsonl", rows)
    print(f"{len(rows)} references -> {out}")


if __name__ == "__main__":
    main()
