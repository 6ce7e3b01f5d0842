"""Entry point of the ``conveyor`` command: ``conveyor run ...`` and ``conveyor demo``.

Kept tiny so that start-up stays fast: each subcommand's module is imported only when
that subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_ERROR = 255


def _top_parser() -> argparse.ArgumentParser:
    from conveyor.cli.options import ErrorRaisingParser

    parser = ErrorRaisingParser(
        prog="conveyor",
        description="Run Python functions and shell commands in parallel.",
        epilog="Run 'conveyor run --help' for the command runner's options.",
    )
    parser.add_argument(
        "-V", "--version", action="store_true", help="print conveyor's version and exit"
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="{run,joblog,sem,demo}")
    sub.add_parser(
        "run",
        add_help=False,
        help="run a shell command once per input, in parallel (GNU parallel-like)",
    )
    sub.add_parser(
        "joblog",
        add_help=False,
        help="print a --joblog file in GNU parallel's tab-separated layout",
    )
    sub.add_parser(
        "sem",
        add_help=False,
        help="start a command when a slot of a named semaphore is free (GNU sem-like)",
    )
    sub.add_parser(
        "demo",
        add_help=False,
        help="count primes serially, in threads and in processes; compare times",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``conveyor`` command with ``argv`` (default ``sys.argv[1:]``); return the
    exit status: a subcommand's status, or 255 for a bad command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "run":
            from conveyor.cli.run import main as run_main

            return run_main(args[1:])
        if args and args[0] == "joblog":
            from conveyor.cli.joblog import main as joblog_main

            return joblog_main(args[1:])
        if args and args[0] == "sem":
            from conveyor.cli.sem import main as sem_main

            return sem_main(args[1:])
        if args and args[0] == "demo":
            from conveyor.cli.demo import main as demo_main

            return demo_main(args[1:])
        if args and args[0] in ("-V", "--version"):
            from conveyor._version import __version__

            print(f"conveyor {__version__}")
            return 0
        from conveyor.cli.options import UsageError

        if not args:
            _top_parser().print_help(sys.stderr)
            return EXIT_ERROR
        try:
            _top_parser().parse_args(args)
        except UsageError as e:
            print(f"conveyor: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as e:  # --help / --version inside a subcommand's parser
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
