"""Small helpers that turn frames and timings into Dagster metadata."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator

import dagster as dg
import polars as pl

from auf_assets.core.markdown import markdown_table


def markdown_preview(
    df: pl.DataFrame, max_rows: int = 8, max_chars: int = 80
) -> dg.MarkdownMetadataValue:
    """A short markdown table of the first rows, long text cut to `max_chars`."""
    return dg.MetadataValue.md(markdown_table(df, max_rows, max_chars))


def png_markdown(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    """A PNG embedded in markdown metadata (the UI shows it inline)."""
    data = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def progress_logger(context: dg.AssetExecutionContext, what: str, every_s: float = 10.0):
    last = [0.0]

    def report(done: int, total: int) -> None:
        notify_progress(what, done, total)
        now = time.monotonic()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            context.log.info(f"{what}: {done}/{total}")

    return report


# -- live progress for a console ---------------------------------------------------------------
# `progress_logger` writes to the run's log at most every `every_s` seconds; a console that runs
# the job in this process (`auf demo`) also wants every update, for its progress bar. It registers
# a listener here for the length of the run. With no listener nothing changes.

ProgressListener = Callable[[str, int, int], None]
_progress_listeners: list[ProgressListener] = []


@contextlib.contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call `listener(what, done, total)` on every progress update of this process meanwhile."""
    _progress_listeners.append(listener)
    try:
        yield
    finally:
        _progress_listeners.remove(listener)


def notify_progress(what: str, done: int, total: int) -> None:
    """Tell the registered listeners; a listener's error never reaches the step."""
    for listener in list(_progress_listeners):
        with contextlib.suppress(Exception):  # a console must not break a run
            listener(what, done, total)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
