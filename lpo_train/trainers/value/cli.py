"""``lpo-train train-value implicit|explicit|reward --config recipe.yaml [--key value ...]``: one subcommand per
guidance model, each parsed by TRL's parser over its own dataclasses (``--help`` lists them)."""

from __future__ import annotations

import argparse
import json
import warnings

PROG = "lpo-train train-value"
KINDS = {  # subcommand: what it trains (its --help and the error that names it)
    "implicit": "DPO of a small tuned model (TRL's DPOTrainer; the implicit value, EFT / IVG)",
    "explicit": "a value model on every prefix of sampled responses (token or shared head; FUDGE / IVG)",
    "reward": "a sequence reward model (TRL's RewardTrainer; best-of-N, ARGS)",
}


def build_parser() -> argparse.ArgumentParser:
    """The subcommand level; a subcommand's own flags are parsed by ``parse_config`` (``SUBCOMMAND --help``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Train a guidance model for value-guided decoding.",
                                     epilog=f"'{PROG} SUBCOMMAND --help' lists the subcommand's options (its data "
                                            "arguments, then its trainer config).")
    sub = parser.add_subparsers(dest="kind", metavar="{" + ",".join(KINDS) + "}")
    for kind, text in KINDS.items():  # add_help False: SUBCOMMAND --help reaches its TRL-style parser
        sub.add_parser(kind, help=f"{text}: --config recipe.yaml [--key value ...]", add_help=False)
    return parser


def _needs_a_subcommand(got: str | None = None) -> SystemExit:
    told = f" (got {got!r})" if got is not None else ""
    return SystemExit(f"{PROG} needs a subcommand{told}: " + "; ".join(f"{PROG} {k} [--config recipe.yaml] "
                                                                     f"[--key value ...]: {t}"
                                                                     for k, t in KINDS.items()) + ".")


def _from_kind_flag(argv: list[str]) -> list[str]:
    """The deprecated ``--kind KIND`` (anywhere) as the subcommand ``KIND`` first, with a FutureWarning."""
    argv = [x for a in argv for x in (a.split("=", 1) if a.startswith("--kind=") else [a])]
    if "--kind" not in argv:
        return argv
    i = argv.index("--kind")
    kind = argv[i + 1] if i + 1 < len(argv) else None
    rest = argv[:i] + argv[i + 2:]
    if kind not in KINDS:
        raise _needs_a_subcommand(kind)
    if rest and rest[0] in KINDS and rest[0] != kind:
        raise SystemExit(f"{PROG} {rest[0]} was given --kind {kind} too: drop --kind (deprecated), the subcommand "
                         "says what to train.")
    if rest[:1] == [kind]:
        rest = rest[1:]
    warnings.warn(f"'{PROG} --kind {kind} ...' is deprecated and will be removed: use '{PROG} {kind} ...' "
                  "(a subcommand).", FutureWarning, stacklevel=3)
    return [kind, *rest]


def main(argv: list[str] | None = None) -> dict | None:
    """``lpo-train train-value implicit|explicit|reward [--config recipe.yaml] [--key value ...]`` (the old
    ``--kind KIND`` still works, with a FutureWarning). Returns the run's metrics (None for the top-level help)."""
    argv = _from_kind_flag(list(argv or []))
    if not argv or argv[0] not in KINDS:
        if argv and argv[0] in ("-h", "--help"):
            build_parser().print_help()
            return None
        raise _needs_a_subcommand(argv[0] if argv else None)
    kind = build_parser().parse_known_args(argv[:1])[0].kind

    from trl import DPOConfig, RewardConfig

    from lpo_train.cli_args import parse_config
    from lpo_train.config import LoraArguments
    from lpo_train.trainers.value.data import ValueDataArguments
    from lpo_train.trainers.value.explicit import ExplicitValueConfig, train_explicit_value
    from lpo_train.trainers.value.implicit import train_implicit_value
    from lpo_train.trainers.value.reward import train_reward_model

    kinds = {"implicit": (DPOConfig, train_implicit_value), "explicit": (ExplicitValueConfig, train_explicit_value),
             "reward": (RewardConfig, train_reward_model)}
    config_cls, train = kinds[kind]
    classes = [ValueDataArguments, config_cls] + ([LoraArguments] if kind in ("implicit", "explicit") else [])
    data, args, *lora = parse_config(classes, argv[1:], f"{PROG} {kind}", f"Train {KINDS[kind]}.")
    metrics = train(data, args, lora[0].peft_config()) if lora else train(data, args)
    print(json.dumps(metrics, indent=2))
    return metrics
