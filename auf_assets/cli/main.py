"""The `auf` command line: one parser, each group of commands in its own module."""

from __future__ import annotations

import argparse
import sys

from auf_assets.cli import cost, demo, labels, release, rounds, simulate, store, train


def _methods(args: argparse.Namespace) -> int:
    from auf_assets.core.methods import FAMILIES, methods

    for number, (family, what) in enumerate(FAMILIES.items()):
        print(("\n" if number else "") + f"{family} methods: {what}")
        for method in methods(family):
            needs = ", ".join(method.needs) or "nothing"
            labels = f"; {method.labels_per_prompt} labels/prompt" if family == "oracle" else ""
            print(f"  {method.name:<20} {method.description} [needs {needs}{labels}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auf", description="Active-learning preference data generation on Dagster."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_commands(sub)
    methods = sub.add_parser("methods", help="list the selection methods")
    methods.set_defaults(func=_methods)
    for module in (rounds, labels, simulate, release, train, cost, store):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A bad flag value (a number out of its range, an unknown method) stops the parser: exit 2.
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
