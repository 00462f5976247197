"""The ``shoesearch`` command line: one sub-command per pipeline step, plus warehouse queries."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from shoesearch import __version__

# Command modules under shoesearch.commands, in the order their commands appear in --help.
COMMAND_MODULES = ["crawl", "denoise", "overrides", "train", "search", "warehouse"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shoesearch",
        description="Crawl shoe products, denoise their photos, train NetVLAD, search by photo.",
    )
    parser.add_argument("--home", help="data home (default: $SHOESEARCH_HOME or ./data)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a setting, e.g. --set train.epochs=3 (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"shoesearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"shoesearch.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import ShoesearchError
    from core.settings import Settings
    from shoesearch.flow_guard import TERMINATED_EXIT, FlowEnded, Terminated
    from shoesearch.runtime import prepare_prefect_environment, set_overrides
    from warehouse.store import SchemaError

    prepare_prefect_environment()

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.load(home=args.home, overrides=set_overrides(args.set))
        os.environ["SHOESEARCH_HOME"] = str(settings.home)  # subprocesses (scrapy) see it
        return int(args.func(args, settings) or 0)
    except FlowEnded as ended:  # Prefect's server was lost: one line, the warehouse's outcome, exit now
        ended.exit()
    except Terminated:
        print("shoesearch: terminated (SIGTERM): a step that was running is recorded as failed, committed work "
              "is kept; run the command again to continue", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shoesearch ... | head`: the reader left; say nothing, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        return 141  # 128 + SIGPIPE, the shell's status for a writer killed by a closed pipe
    except (ShoesearchError, SchemaError, ValueError, KeyError, FileNotFoundError) as exc:
        if args.debug:
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"shoesearch: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI never ends in a bare traceback
        if args.debug:
            traceback.print_exc()
        print(f"shoesearch: unexpected {type(exc).__name__}: {exc}\n(rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
