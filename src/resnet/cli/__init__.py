"""The ``resnet`` command. Each sub-command lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import UsageError

# modules that define commands (`campaign` defines `campaign` and `runs`); one obvious place per command. Every
# `resnet` invocation imports them all to register the commands, so each imports the library inside its `run`
# function: `resnet --help` and a mistyped flag stay fast (the function-local imports of cli/ are for this).
COMMANDS = ("models", "summary", "train", "eval", "compare", "predict", "export", "bench", "reproduce", "campaign")


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage dump) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The loggers of long jobs whose lines name their own source (``[reproduce] ...``, ``[campaign] ...``): shown as
# they are.
TAGGED = ("resnet.runs", "resnet.campaign", "resnet.experiments")


class CommandLines(logging.Handler):
    """The library's messages (the ``resnet.*`` loggers) as the command's own lines, ``resnet COMMAND: message``
    (those of ``TAGGED`` as they are): information on stdout, warnings and errors on stderr. The library itself never
    prints them."""

    def __init__(self, command: str):
        super().__init__(logging.INFO)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        prefix = "" if record.name in TAGGED else f"resnet {self.command}: "
        print(f"{prefix}{record.getMessage()}", file=stream, flush=True)


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="resnet", description="Deep Residual Learning for Image Recognition (He et al. 2015).")
    parser.add_argument("--version", action="version", version=f"resnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logger, lines = logging.getLogger("resnet"), CommandLines(args.command)
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"resnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a run stopped by a signal after saving (``signum``)
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    finally:
        logger.removeHandler(lines)
