"""The `auf` command line.

| module | commands |
|---|---|
| `demo` | `auf demo` |
| `labels` | `auf labels import`, `auf labels status` |
| `simulate` | `auf simulate`, `auf bench` |
| `release` | `auf export`, `auf publish` |
| `train` | `auf train` |
| `common` | the home, the Dagster instance, reading run results |
"""

from auf_assets.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
