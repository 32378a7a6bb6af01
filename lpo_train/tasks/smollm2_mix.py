"""``smollm2_mix``: a mixed prompt suite for SmolLM2-135M-Instruct with measured temperature headroom.

Families, all scored offline, each with a reward that neither extreme can game:

- ``capital``: "What is the capital of X?"; 1 if the capital is named as a whole word.
  Greedy is nearly always right; sampling drifts.
- ``copy``: "Repeat this sentence exactly: The small dog waits near the station every morning.";
  1 if the answer contains the sentence word for word (case and punctuation aside). Greedy copies
  most sentences; every sampled slip breaks the copy, so the reward falls fast with T.
- ``pick_fewshot``: "Name a random animal. Answer with one word.", after four earlier turns that
  answer other random requests with one word ("Name a random fruit. One word." -> "Mango."). A
  request for a *random* choice, asked N times: each sample earns 1 / (how many samples of the
  same prompt named the same item) when it names a category lexicon item within its first 12
  words, else 0. Greedy gives the same answer N times (1 / N each); hot samples invent words
  ("Zarilla", "Amarlek"), which earn nothing. Diversity and validity both count. The earlier turns
  teach the one-word format, so hot samples stay real names more often than without them. This
  reward is a function of the prompt's group of samples (the trainer and ``evaluate`` score all N
  samples of a prompt in one call; it groups by prompt).
- ``arith``: "What is a + b?" (single digits); 1 if the last number of the answer is the sum.
  Right most often at T = 0-0.2, but nearly flat up to T = 0.6 (not a default: little
  temperature signal).
- ``pick``: ``pick_fewshot`` without the earlier turns (the first replication's hot family; most
  answers are non-answers at every T, best about 0.27 at T = 0.4).
- ``list``: "List 8 different animals, one per line." (animals, fruits, vegetables, colours,
  countries, sports, instruments); reward = distinct *valid* items / requested count. Greedy
  lists loop ("4. Fish 5. Fish 6. Fish ..."), hot samples invent words, which the lexicon
  rejects. Not a default: greedy is already its best temperature.

``dataset_name: smollm2_mix`` (train split) and ``smollm2_mix:eval`` (held out) give disjoint
prompts (split by a hash of the last user turn) of the default families (capital, copy,
pick_fewshot), optionally ``smollm2_mix:eval:FAMILY+FAMILY``
(``smollm2_mix:train:arith+capital+pick`` is the suite of the first replication, docs/results.md
8.3-8.5). Families are balanced: each contributes as many prompts as the smallest one,
interleaved. The reward is the built-in ``smollm2_mix``.
"""

from __future__ import annotations

import hashlib
import re

from lpo_train.registry import register_dataset, register_reward
from lpo_train.tasks.toy import arith_final_score
from lpo_train.text import answer_mentioned, completion_text, long_non_repetitive

NAME = "smollm2_mix"
FAMILIES = ("arith", "capital", "copy", "list", "pick", "pick_fewshot")
DEFAULT_FAMILIES = ("capital", "copy", "pick_fewshot")  # two where greedy wins, one where a higher T wins (measured)
PICK_FAMILIES = ("pick", "pick_fewshot")  # one reward over the group of a prompt's samples

_LEXICON_TEXT = {
    "animals": """
ant antelope ape armadillo bird python insect parakeet baboon badger bat bear beaver bee beetle bison boar buffalo bull butterfly camel
canary cat caterpillar cheetah chicken chimpanzee chipmunk cobra cougar cow coyote crab crane crocodile crow
deer dingo dog dolphin donkey dove dragonfly duck eagle eel elephant elk emu falcon ferret finch fish flamingo
fly fox frog gazelle gecko gerbil giraffe goat goldfish goose gorilla grasshopper guinea pig hamster hare hawk
hedgehog heron hippo hippopotamus horse hummingbird hyena iguana jaguar jellyfish kangaroo kiwi koala
ladybug lamb lemur leopard lion lizard llama lobster lynx macaw magpie manatee meerkat mole mongoose monkey
moose mosquito moth mouse mule octopus orangutan ostrich otter owl ox oyster panda panther parrot peacock
pelican penguin pig pigeon platypus polar bear pony porcupine possum puma quail rabbit raccoon ram rat raven
reindeer rhino rhinoceros robin salamander salmon scorpion seal shark sheep shrimp skunk sloth snail snake
sparrow spider squid squirrel starfish stork swan tiger toad tortoise toucan trout tuna turkey turtle vulture
walrus wasp weasel whale wolf wombat woodpecker worm yak zebra horse goldfinch cardinal bluebird blue jay
chihuahua poodle beagle bulldog labrador puppy kitten calf hen rooster duckling gorilla alligator sea lion
sea turtle killer whale orca hawk grizzly bear brown bear black bear red panda snow leopard bald eagle
komodo dragon komodo shiba inu husky terrier retriever aardwolf aardvark
""",
    "fruits": """
apple apricot avocado banana blackberry blackcurrant blueberry cantaloupe cherry clementine coconut cranberry
currant date dragon fruit durian elderberry fig gooseberry grape grapefruit guava honeydew jackfruit kiwi
kiwifruit kumquat lemon lime lychee mandarin mango melon mulberry nectarine olive orange papaya passion fruit
peach pear persimmon pineapple plum pomegranate pomelo quince raspberry rhubarb starfruit strawberry tangerine
tomato watermelon cherry tomato acai boysenberry cloudberry huckleberry loganberry plantain prune raisin
yuzu blood orange green apple red apple
""",
    "vegetables": """
artichoke arugula asparagus bean beet beetroot bell pepper bok choy broccoli brussels sprout cabbage carrot
cauliflower celery chard chickpea chili collard corn cucumber eggplant endive fennel garlic ginger green bean
kale leek lentil lettuce mushroom okra onion parsnip pea pepper potato pumpkin radish rutabaga scallion
shallot spinach squash sweet potato sweet corn tomato turnip yam zucchini courgette aubergine watercress
red onion green pepper red pepper jalapeno cassava taro kohlrabi snap pea spring onion
""",
    "colors": """
red orange yellow green blue indigo violet purple pink brown black white gray grey silver gold beige maroon
navy teal turquoise cyan magenta lavender lilac crimson scarlet burgundy olive lime mint emerald jade
coral salmon peach amber ivory cream tan khaki charcoal ruby sapphire aqua azure cobalt chartreuse fuchsia
mauve plum ochre sienna umber copper bronze rose mustard sky blue navy blue dark blue light blue dark green
light green forest green royal blue baby blue hot pink
""",
    "countries": """
afghanistan albania algeria andorra angola argentina armenia australia austria azerbaijan bahamas bahrain
bangladesh barbados belarus belgium belize benin bhutan bolivia bosnia botswana brazil brunei bulgaria
burkina faso burundi cambodia cameroon canada chad chile china colombia comoros congo costa rica croatia cuba
cyprus czech republic czechia denmark djibouti dominica dominican republic ecuador egypt el salvador england
eritrea estonia eswatini ethiopia fiji finland france gabon gambia georgia germany ghana greece grenada
guatemala guinea guyana haiti honduras hungary iceland india indonesia iran iraq ireland israel italy jamaica
japan jordan kazakhstan kenya kiribati korea south korea north korea kosovo kuwait kyrgyzstan laos latvia
lebanon lesotho liberia libya liechtenstein lithuania luxembourg madagascar malawi malaysia maldives mali
malta mauritania mauritius mexico micronesia moldova monaco mongolia montenegro morocco mozambique myanmar
namibia nauru nepal netherlands holland new zealand nicaragua niger nigeria norway oman pakistan palau panama
papua new guinea paraguay peru philippines poland portugal qatar romania russia rwanda samoa san marino
saudi arabia scotland senegal serbia seychelles sierra leone singapore slovakia slovenia somalia south africa
spain sri lanka sudan suriname sweden switzerland syria taiwan tajikistan tanzania thailand togo tonga
trinidad tunisia turkey turkmenistan tuvalu uganda ukraine united kingdom uk united states usa america
united arab emirates uae uruguay uzbekistan vanuatu vatican venezuela vietnam wales yemen zambia zimbabwe
""",
    "sports": """
athletics archery badminton baseball basketball biathlon bowling boxing canoeing cricket croquet curling cycling darts
diving fencing field hockey football golf gymnastics handball hiking hockey ice hockey judo karate kayaking
lacrosse martial arts motocross netball polo racquetball rowing rugby running sailing skateboarding skating
skiing snowboarding soccer softball squash surfing swimming table tennis taekwondo tennis track and field
triathlon volleyball water polo weightlifting wrestling ping pong marathon horse riding climbing rock climbing
beach volleyball figure skating equestrian
""",
    "instruments": """
accordion bagpipes banjo bass bass guitar bassoon bongo cello clarinet cymbal cymbals double bass drum drums
electric guitar euphonium fiddle flute french horn glockenspiel gong guitar harmonica harp harpsichord horn
keyboard lute lyre mandolin marimba oboe organ piano piccolo recorder saxophone sitar snare drum synthesizer
tambourine timpani triangle trombone trumpet tuba ukulele viola violin xylophone acoustic guitar
""",
}

# one item per line of a category's text block is too coarse (multi-word items): every listed
# name counts, both as written and as its two-word phrases
LEXICONS: dict[str, frozenset[str]] = {}
for _cat, _text in _LEXICON_TEXT.items():
    _words = _text.split()
    LEXICONS[_cat] = frozenset(_words) | frozenset(" ".join(_words[i:i + 2]) for i in range(len(_words) - 1)) \
        | frozenset(" ".join(_words[i:i + 3]) for i in range(len(_words) - 2))

_CATEGORY_WORDS = {"animals": "animals", "fruits": "fruits", "vegetables": "vegetables", "colors": "colours",
                   "countries": "countries", "sports": "sports", "instruments": "musical instruments"}
_LIST_TEMPLATES = ("List {k} different {c}, one per line.", "Name {k} {c}. Put each one on its own line.",
                   "Give me a list of {k} {c}, one per line.", "Write down {k} different {c}, one per line.",
                   "What are {k} {c}? List them, one per line.", "Please list {k} {c}, one per line.")
_LIST_COUNTS = (5, 6, 8)
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa",
    "England": "London", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo",
    "Poland": "Warsaw", "Sweden": "Stockholm", "Kenya": "Nairobi", "Peru": "Lima", "Thailand": "Bangkok",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Hungary": "Budapest", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "India": "New Delhi", "South Korea": "Seoul", "Cuba": "Havana",
    "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Turkey": "Ankara", "Iran": "Tehran",
    "Chile": "Santiago", "Colombia": "Bogota", "Vietnam": "Hanoi", "the Philippines": "Manila",
    "Indonesia": "Jakarta", "Scotland": "Edinburgh", "Switzerland": "Bern", "Ukraine": "Kyiv",
}
_CAPITAL_TEMPLATES = ("What is the capital of {x}?", "Which city is the capital of {x}?",
                      "Name the capital city of {x}.")
_PICK_TEMPLATES = ("Name a random {s}. Answer with one word.", "Pick any {s} at random and tell me its name.",
                   "Say the name of one {s}, any {s}.", "Choose a {s} at random. Reply with just its name.",
                   "Tell me one {s}. Just the name, please.", "Think of a {s}. Which one? One word.",
                   "Give me the name of a random {s}.", "I need a random {s}. Name one.")
_SINGULAR_WORDS = {"animals": "animal", "fruits": "fruit", "vegetables": "vegetable", "colors": "colour",
                   "countries": "country", "sports": "sport", "instruments": "musical instrument"}
PICK_MAX_WORDS = 12
# earlier turns of a pick_fewshot prompt: (category, request, answer); the four of other categories than the asked one
_PICK_SHOTS = (("colors", "Name a random colour. One word.", "Teal."),
               ("fruits", "Name a random fruit. One word.", "Mango."),
               ("animals", "Name a random animal. One word.", "Otter."),
               ("sports", "Name a random sport. One word.", "Rowing."),
               ("countries", "Name a random country. One word.", "Peru."))
_COPY_TEMPLATES = ("Repeat this sentence exactly: {x}", "Copy the following sentence word for word: {x}",
                   "Write this sentence again, exactly as it is: {x}")
_COPY_SUBJECTS = ("The small dog", "My old neighbour", "A tired teacher", "The red bus", "Her little brother",
                  "The quiet student", "A young farmer", "The black cat")
_COPY_ENDINGS = ("waits near the station every morning.", "walked slowly across the wet field.",
                 "sings a song before going to bed.", "forgot the keys on the kitchen table.",
                 "found a blue stone by the river.", "stopped to read the sign on the door.",
                 "bought fresh bread at the corner shop.", "watched the rain from the open window.")
_ARITH_TEMPLATES = ("What is {a} + {b}?", "Compute {a} + {b}.", "How much is {a} plus {b}?")

_NUMBERING = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|[a-z][.)])\s*", re.IGNORECASE)


def _singular(word: str) -> str:
    for suffix, repl in (("ies", "y"), ("oes", "o"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ses", "s"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[: -len(suffix)] + repl
    return word


def list_items(text: str) -> list[str]:
    """The items of a list answer: one per line (numbering and bullets stripped), or comma separated
    when the answer is one line; lower-cased, trailing punctuation and parentheses dropped."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    parts = lines if len(lines) > 1 else re.split(r"[,;]", text)
    items = []
    for part in parts:
        item = _NUMBERING.sub("", part).strip()
        item = re.sub(r"\(.*?\)|\*+", "", item).strip().strip(".!:-").strip().lower()
        if item:
            items.append(item)
    return items


def valid_item(item: str, category: str) -> str | None:
    """The lexicon entry ``item`` names (singular or as written), or None when it names none."""
    lexicon = LEXICONS[category]
    item = re.sub(r"^(?:a|an|the)\s+", "", item)
    for candidate in (item, _singular(item), " ".join(_singular(w) for w in item.split())):
        if candidate in lexicon:
            return candidate
    return None


def list_score(text: str, category: str, count: int) -> float:
    """Distinct valid items among the first ``count`` items, divided by ``count``. Repeats,
    invented words and noise earn nothing; a shorter list earns less."""
    valid = [valid_item(it, category) for it in list_items(text)[:count]]
    return len({v for v in valid if v is not None}) / count


def named_item(text: str, category: str, within: int = 12) -> str | None:
    """The first lexicon item named among the first ``within`` words of ``text`` (longest phrase first), or None."""
    words = re.findall(r"[a-z]+", text.lower())[:within]
    for i in range(len(words)):
        for n in (3, 2, 1):
            if i + n <= len(words):
                found = valid_item(" ".join(words[i:i + n]), category)
                if found is not None:
                    return found
    return None


def pick_scores(texts: list[str], categories: list[str], groups: list) -> list[float]:
    """``pick`` rewards: a valid short answer earns 1 / (number of same-group answers naming the same item)."""
    items = [named_item(t, c, PICK_MAX_WORDS) for t, c in zip(texts, categories)]
    counts: dict = {}
    for g, it in zip(groups, items):
        if it is not None:
            counts[(g, it)] = counts.get((g, it), 0) + 1
    return [0.0 if it is None else 1.0 / counts[(g, it)] for g, it in zip(groups, items)]


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def copy_score(text: str, sentence: str) -> float:
    """1 if the answer contains ``sentence`` word for word (case, punctuation and spacing ignored), else 0."""
    return float(f" {_words(sentence)} " in f" {_words(text)} ")


def _list_reward(text: str, answer: str) -> float:
    category, _, count = answer.partition(":")
    return list_score(text, category, int(count))


_SMOLLM2_MIX = {"arith": arith_final_score, "capital": answer_mentioned, "copy": copy_score, "list": _list_reward}
_REAL_MIX = {"arith": arith_final_score, "capital": answer_mentioned, "story": lambda text, _: long_non_repetitive(text)}


def _per_sample(suite: str, scorers: dict, family: str, text: str, answer: str) -> float:
    if family not in scorers:
        raise ValueError(f"{suite} has no reward for family {family!r}; its families are "
                         f"{FAMILIES if suite == NAME else tuple(scorers)}.")
    return scorers[family](text, answer)


def smollm2_mix_reward(prompts, completions, family, answer, **kwargs) -> list[float]:
    """arith: the last number is the sum; capital: the capital is named; list: ``list_score``
    (``answer`` is "CATEGORY:COUNT"); pick and pick_fewshot: ``pick_scores`` over the samples of each prompt
    (``answer`` is the category)."""
    import json

    out: list[float | None] = []
    picks = []
    prompts = prompts if prompts is not None else [None] * len(completions)
    for i, (c, f, a) in enumerate(zip(completions, family, answer, strict=True)):
        if f in PICK_FAMILIES:
            picks.append(i)
        out.append(None if f in PICK_FAMILIES else _per_sample(NAME, _SMOLLM2_MIX, f, completion_text(c), a))
    if picks:
        scores = pick_scores([completion_text(completions[i]) for i in picks], [answer[i] for i in picks],
                             [json.dumps(prompts[i], sort_keys=True) for i in picks])
        for i, score in zip(picks, scores):
            out[i] = score
    return out


def _split_of(text: str) -> str:
    return "eval" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3 == 0 else "train"


def all_rows() -> list[dict]:
    """Every prompt of the suite, TRL conversational, with ``family``, ``answer`` and ``split``."""
    rows = []
    for a in range(10):
        for b in range(10):
            content = _ARITH_TEMPLATES[(a * 10 + b) % len(_ARITH_TEMPLATES)].format(a=a, b=b)
            rows.append(("arith", content, str(a + b)))
    for i, (country, capital) in enumerate(CAPITALS.items()):
        for j, template in enumerate(_CAPITAL_TEMPLATES):
            if (i + j) % 2 == 0:
                rows.append(("capital", template.format(x=country), capital))
    for i, subject in enumerate(_COPY_SUBJECTS):
        for j, ending in enumerate(_COPY_ENDINGS):
            sentence = f"{subject} {ending}"
            rows.append(("copy", _COPY_TEMPLATES[(i + j) % len(_COPY_TEMPLATES)].format(x=sentence), sentence))
    for category, words in _CATEGORY_WORDS.items():
        for k in _LIST_COUNTS:
            for template in _LIST_TEMPLATES:
                rows.append(("list", template.format(k=k, c=words), f"{category}:{k}"))
    for category, word in _SINGULAR_WORDS.items():
        for template in _PICK_TEMPLATES:
            rows.append(("pick", template.format(s=word), category))
            rows.append(("pick_fewshot", template.format(s=word), category))
    return [{"prompt": _turns(family, answer) + [{"role": "user", "content": content}], "family": family,
             "answer": answer, "split": _split_of(content)} for family, content, answer in rows]


def _turns(family: str, category: str) -> list[dict]:
    """The earlier turns of a prompt: none, or for ``pick_fewshot`` four one-word answers to other requests."""
    if family != "pick_fewshot":
        return []
    shots = [(q, a) for c, q, a in _PICK_SHOTS if c != category][:4]
    return [{"role": role, "content": text} for q, a in shots for role, text in (("user", q), ("assistant", a))]


def make_rows(spec: str, seed: int = 0) -> list[dict]:
    """Rows for ``smollm2_mix[:SPLIT][:FAMILY+FAMILY]`` (split train by default), in a fixed order
    shuffled by ``seed`` and interleaved by family so that any prefix is balanced."""
    import random

    parts = spec.split(":")
    if parts[0] != NAME or len(parts) > 3:
        raise ValueError(f"Give '{NAME}', '{NAME}:eval' or '{NAME}:train:list+arith'; got {spec!r}.")
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    if split not in ("train", "eval"):
        raise ValueError(f"The {NAME} split must be 'train' or 'eval', got {split!r} in {spec!r}.")
    families = parts[2].split("+") if len(parts) > 2 else list(DEFAULT_FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"Unknown {NAME} families {unknown} in {spec!r}; choose from {FAMILIES}.")
    rng = random.Random(f"{NAME}-{seed}")
    by_family = {f: [r for r in all_rows() if r["split"] == split and r["family"] == f] for f in families}
    for rows in by_family.values():
        rng.shuffle(rows)
    out = []
    for i in range(min(map(len, by_family.values()))):  # balanced: as many of each as of the smallest
        out += [rows[i] for rows in by_family.values()]
    return out


def is_suite(name: str | None) -> bool:
    return bool(name) and (name == NAME or name.startswith(NAME + ":"))


def real_mix_reward(prompts, completions, family, answer, **kwargs) -> list[float]:
    """The earlier SmolLM2 suite (docs/results.md §8, first attempt): ``arith`` = the last number is the
    sum, ``capital`` = the capital is named, ``story`` = ``long_non_repetitive``."""
    return [_per_sample("real_mix", _REAL_MIX, f, completion_text(c), a)
            for c, f, a in zip(completions, family, answer, strict=True)]


def load_suite(spec: str, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """``dataset_name: smollm2_mix[:SPLIT][:FAMILY+FAMILY]`` (the split is the spec's, not ``dataset_split``)."""
    return make_rows(spec, seed)


register_reward(NAME, smollm2_mix_reward)
register_reward("real_mix", real_mix_reward)
register_dataset(NAME, load_suite, default_rewards=[NAME])  # its families' own rewards
