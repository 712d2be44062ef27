"""The `auf` command line: one parser, each group of commands in its own module."""

from __future__ import annotations

import argparse
import sys

from auf_assets.cli import cost, demo, labels, release, rounds, simulate, train


def _methods(args: argparse.Namespace) -> int:
    from auf_assets.core.acquisition import ACQUISITION_METHODS
    from auf_assets.core.baselines import BASELINE_METHODS
    from auf_assets.core.policy_selection import POLICY_METHODS

    print("Acquisition functions (pick 2 of N responses from the reward model's uncertainty):")
    for name, method in ACQUISITION_METHODS.items():
        print(f"  {name:<16} {method.description}")
    print("\nPolicy-aware selection (the DPO policy being aligned picks its own pairs):")
    for name, description in POLICY_METHODS.items():
        print(f"  {name:<16} {description}")
    print("\nStatic oracle baselines (read every response's oracle score; for comparison):")
    for name, method in BASELINE_METHODS.items():
        print(f"  {name:<20} {method.description} [{method.labels_per_prompt} labels/prompt]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auf", description="Active-learning preference data generation on Dagster."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_commands(sub)
    methods = sub.add_parser("methods", help="list the selection methods")
    methods.set_defaults(func=_methods)
    for module in (rounds, labels, simulate, release, train, cost):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A bad flag value (a number out of its range, an unknown method) stops the parser: exit 2.
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
