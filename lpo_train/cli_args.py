"""One way to declare a config field and to parse a subcommand's flags (TRL's parser: a YAML recipe
via ``--config`` plus ``--key value`` overrides), shared by every command."""

from __future__ import annotations

import argparse
from dataclasses import field


def help_field(text: str, default=None, **kw):
    """A dataclass field with its one help string (shown by ``--help`` and the docs)."""
    return field(default=default, metadata={"help": text}, **kw)


def parse_config(dataclass_types: list, argv: list[str] | None, prog: str, description: str | None = None):
    """Parse ``argv`` into instances of ``dataclass_types``. ``--help`` lists ``--config`` first, then
    each dataclass's own options before the ones it inherits (e.g. LPO's before TrainingArguments')."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types=dataclass_types, prog=prog, description=description,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="RECIPE.yaml",
                        help="A YAML recipe: its keys become the defaults; --key value flags override them.")
    own = ["help", "config"]  # lpo-train's own fields, in declaration order, before inherited (TRL/transformers) ones
    for cls in dataclass_types:
        for base in reversed(cls.__mro__):
            if base.__module__.startswith("lpo_train"):
                own += [name for name in vars(base).get("__annotations__", {}) if name not in own]
    def ordered(actions):
        first = sorted((a for a in actions if a.dest in own), key=lambda a: own.index(a.dest))
        return first + [a for a in actions if a not in first]

    parser._optionals._group_actions = ordered(parser._optionals._group_actions)
    parser._actions = ordered(parser._actions)
    parsed = parser.parse_args_and_config(argv)
    return [p for p in parsed if not isinstance(p, argparse.Namespace)]
