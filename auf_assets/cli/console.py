"""The console of `auf` commands that run jobs: one line per stage, progress, and the full log.

`job_console` gives a `RunConsole`: a Dagster logger that writes every record of a run to a log
file under the home and turns step events into one line per finished stage (with the asset's key
numbers), a live progress line while a stage works, and the round summary. `--verbose` shows the
full Dagster log on the console too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from resources import home

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # Dagster's console format
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S %z"
STAGE_WIDTH = 19
PLAIN_EVERY_S = 5.0  # without a terminal: at most one update line per stage this often
LIVE_EVERY_S = 0.1  # on a terminal: redraw the live line at most this often
# Warnings a person running the demo cannot act on: console-quiet, still in the log file.
QUIET_WARNINGS = (FutureWarning, DeprecationWarning)
_ABANDONED = re.compile(r"^Dependencies for step \S+ .*Not executing\.$", re.DOTALL)


def _quiet_warning(category: type[Warning]) -> bool:
    try:
        from dagster_shared.utils.warnings import (
            BetaWarning,
            PreviewWarning,
            SupersessionWarning,
        )
    except ImportError:  # pragma: no cover - an older or newer Dagster
        noisy = QUIET_WARNINGS
    else:
        noisy = (*QUIET_WARNINGS, PreviewWarning, BetaWarning, SupersessionWarning)
    return issubclass(category, noisy)


def _stage_note(asset: str, md: dict) -> str:
    """The key number(s) of a finished stage, from its materialization metadata."""

    def num(key, fmt="{}"):
        value = md.get(key)
        return fmt.format(value) if value is not None else "?"

    rows = md.get("dagster/row_count")
    if asset == "prompt_pool":
        return f"{num('dagster/row_count')} prompts ({num('new_prompts')} new)"
    if asset == "round_prompts":
        left = num("prompts_left_after_round")
        return f"{num('dagster/row_count')} prompts ({left} left in the pool)"
    if asset == "completions":
        speed = md.get("tokens_per_second")
        return f"{rows} responses" + (f", {speed} tok/s" if speed else "")
    if asset == "response_features":
        return f"{num('encoded')} encoded, {num('reused')} reused"
    if asset == "reward_scores":
        return f"{rows} responses scored ({num('reward_model_round')})"
    if asset == "selected_pairs":
        note = f"{rows} pairs by {num('method')}"
        gap, rand = md.get("mean_predicted_gap"), md.get("random_pair_predicted_gap")
        if gap is not None and rand is not None:
            note += f", predicted gap {gap:.3f} (random pick {rand:.3f})"
        return note
    if asset == "judgements":
        note = f"{num('labelled_pairs')} labelled pairs ({num('ties')} ties"
        note += f", {md['failed_pairs']} failed)" if "failed_pairs" in md else ")"
        if md.get("judge_calls"):
            note += f", {md['judge_calls']} judge calls"
        return note
    if asset == "reward_model":
        before, after = md.get("loss_before"), md.get("loss_after")
        loss = f"loss {before:.4f} -> {after:.4f}" if None not in (before, after) else "trained"
        return f"{loss} on {num('replay_pairs')} pairs"
    if asset == "policy_logprobs":
        cached = f"reference: {num('reference_computed')} new, {num('reference_cached')} cached"
        return f"{rows} responses scored by the policy of {num('policy_round')} ({cached})"
    if asset == "dpo_policy":
        loss = md.get("loss_last")
        shown = f", loss {loss:.4f}" if loss is not None else ""
        return f"{num('steps')} DPO steps on {num('train_pairs')} pairs{shown}"
    if asset == "preference_dataset":
        splits = md.get("rows_per_split") or {}
        shown = ", ".join(f"{split} {n}" for split, n in splits.items())
        return f"{md.get('version')}: {rows} pairs ({shown})"
    if asset == "dataset_report":
        return f"{md.get('version')}: {len(md.get('rows_per_figure') or {})} figures in report/"
    if asset == "hub_dataset":
        what = "pushed" if md.get("new_commit") else "unchanged (no new commit)"
        return f"{what}: {md.get('url')}"
    if asset == "judge_screening":
        if not md.get("screened"):
            return "nothing to screen (the label source is not judge+people)"
        return (
            f"{rows} pairs judged: {num('unsure')} unsure and {num('calibration')} for "
            f"calibration go to people, the judge decides {num('judge_decides')}"
        )
    if asset == "annotation_batch":
        if md.get("written") is False:
            return "nothing written (labels do not come from people)"
        return f"{rows} pairs written to the outbox"
    return f"{rows} rows" if rows is not None else "done"


class _Stage:
    def __init__(self, step: str, started: float):
        self.step = step
        self.started = started
        self.status = ""
        self.progress: tuple[str, int, int] | None = None
        self.printed_at: float | None = None
        self.assets: dict[str, dict] = {}
        self.checks = 0


class RunConsole:
    """The console of one command: stage lines, live progress, and the log file behind them."""

    def __init__(
        self,
        log_path: Path,
        *,
        verbose: bool,
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log_path = log_path
        self.verbose = verbose
        self.clock = clock
        self.out = stream if stream is not None else _own_copy(sys.stdout)
        self._owns_out = stream is None and self.out is not sys.stdout
        self.tty = _isatty(self.out) and os.environ.get("TERM") != "dumb"
        self.width = _columns(self.out)
        self._lock = threading.RLock()
        self._live = ""
        self._drawn_at = 0.0
        self._stages: dict[str, _Stage] = {}
        self._current: _Stage | None = None
        self._progress_text = ""
        self._abandoned = 0
        self.interrupted = False  # a run of this command stopped on Ctrl-C
        self.formatter = logging.Formatter(LOG_FORMAT, LOG_DATEFMT)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file_handler = logging.FileHandler(log_path, encoding="utf-8")
        self.file_handler.setFormatter(self.formatter)
        # On a terminal the live line's clock ticks even while a stage reports nothing.
        self._stop = threading.Event()
        self._ticker = None
        if self.tty and not verbose:
            self._ticker = threading.Thread(target=self._tick, name="auf-console", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._current is not None:
                    self._draw(force=True)

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass

    def _clear_live(self) -> None:
        if self._live:
            self._write("\r\x1b[K")
            self._live = ""

    def say(self, text: str = "") -> None:
        """A line for the person (stdout)."""
        with self._lock:
            sys.stdout.flush()
            live = self._live
            self._clear_live()
            self._write(text + "\n")
            if live:
                self._draw(force=True)

    def error(self, text: str) -> None:
        """A line on stderr (after what the console wrote so far)."""
        with self._lock:
            self._clear_live()
            print(text, file=sys.stderr, flush=True)

    def log_exception(self, what: str) -> None:
        """The exception being handled, with its trace, to the log file only."""
        self.file_handler.handle(
            logging.makeLogRecord(
                {
                    "name": "auf",
                    "levelno": logging.ERROR,
                    "levelname": "ERROR",
                    "msg": what,
                    "exc_info": sys.exc_info(),
                }
            )
        )

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            self._clear_live()
            self.file_handler.close()
            if self._owns_out:
                with contextlib.suppress(OSError):
                    self.out.close()

    # -- Dagster's records -----------------------------------------------------------------------

    def logger_defs(self) -> dict:
        """Logger definitions for `JobDefinition.with_logger_defs` (Dagster's console kept)."""
        import dagster as dg

        console = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                with contextlib.suppress(Exception):  # the console must never fail a run
                    console.on_record(record)

        def make_logger(_init_context) -> logging.Logger:
            logger = logging.Logger("dagster", level=logging.DEBUG)
            logger.addHandler(self.file_handler)
            logger.addHandler(_Handler())
            return logger

        auf = dg.LoggerDefinition(
            make_logger,
            description="auf's console: stage lines and progress on the console, every record "
            "in the command's log file under $AUF_HOME/logs",
        )
        return {"console": dg.colored_console_logger, "auf_console": auf}

    @staticmethod
    def run_config_loggers() -> dict:
        return {"auf_console": {}}

    def on_record(self, record) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or (event.step_key if event is not None else None)
        with self._lock:
            if self.verbose:
                self.say(self.formatter.format(record))
            if event is not None:
                self._on_event(event, step)
                return
            if self.verbose:
                return
            message = str(meta.get("orig_message", record.getMessage()))
            if _ABANDONED.match(message):  # Dagster's own line for each step after a failure
                self._abandoned += 1
            elif record.levelno >= logging.WARNING:
                self.say(f"  ! {step or meta.get('job_name') or 'run'}: {message}")
            elif record.levelno >= logging.INFO and step and message != self._progress_text:
                self._update(self._stage(step), message)

    def _stage(self, step: str) -> _Stage:
        stage = self._stages.get(step)
        if stage is None:
            stage = self._stages[step] = _Stage(step, self.clock())
        self._current = stage
        return stage

    def _on_event(self, event, step: str | None) -> None:
        from dagster import DagsterEventType as E

        kind = event.event_type
        error = getattr(event.event_specific_data, "error", None)
        if kind in (E.STEP_FAILURE, E.RUN_FAILURE) and _is_interrupt(error):
            self.interrupted = True
        if kind in (E.RUN_SUCCESS, E.RUN_FAILURE, E.RUN_CANCELED):
            self._current = None
            self._stages.clear()
            self._clear_live()
            if self._abandoned and not self.verbose:
                self.say(f"  ({self._abandoned} later steps not run: an earlier step failed)")
            self._abandoned = 0
        elif kind == E.STEP_START and step:
            self._stages.pop(step, None)
            self._stage(step)
            self._draw(force=True)
        elif kind == E.ASSET_MATERIALIZATION and step:
            mat = event.step_materialization_data.materialization
            md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            self._stage(step).assets[mat.asset_key.to_user_string()] = md
        elif kind == E.ASSET_CHECK_EVALUATION and step:
            self._stage(step).checks += 1
            check = event.asset_check_evaluation_data
            if not check.passed:
                why = f": {check.description}" if check.description else ""
                self.say(
                    f"  ! check {check.check_name} of {check.asset_key.to_user_string()} did "
                    f"not pass ({check.severity.value.lower()}){why}"
                )
        elif kind in (E.STEP_SUCCESS, E.STEP_FAILURE, E.STEP_SKIPPED) and step:
            stage = self._stages.pop(step, None) or _Stage(step, self.clock())
            if self._current is stage:
                self._current = None
                self._clear_live()
            seconds = self.clock() - stage.started
            name = f"{step:<{STAGE_WIDTH}}"
            if kind == E.STEP_FAILURE:
                self.say(f"  {name} {seconds:6.1f}s  FAILED")
            elif kind == E.STEP_SKIPPED:
                self.say(f"  {name}          skipped (an earlier step failed)")
            elif stage.assets:
                for asset, md in stage.assets.items():
                    self.say(
                        f"  {f'{asset:<{STAGE_WIDTH}}'} {seconds:6.1f}s  {_stage_note(asset, md)}"
                    )
            elif not stage.checks:  # a check step says something only when its check fails
                self.say(f"  {name} {seconds:6.1f}s")

    # -- progress --------------------------------------------------------------------------------

    def progress(self, what: str, done: int, total: int) -> None:
        """The listener of `auf_assets.reporting.progress_listener`."""
        with self._lock:
            self._progress_text = f"{what}: {done}/{total}"  # progress_logger's log line
            stage = self._current
            if stage is None or self.verbose:
                return
            stage.progress = (what, done, total)
            unit = f"responses by {what}" if stage.step == "completions" else what
            self._update(stage, f"{done}/{total} {unit}", progress=True)

    def _update(self, stage: _Stage, text: str, *, progress: bool = False) -> None:
        if not progress:
            # A message starts a new phase of the stage ("generating ... with <next model>").
            stage.status, stage.progress = text, None
        if self.verbose:
            return
        if self.tty:
            self._draw(force=not progress)
            return
        now = self.clock()
        if stage.printed_at is None or now - stage.printed_at >= PLAIN_EVERY_S:
            stage.printed_at = now
            self.say(f"  {stage.step}: {text}")

    def _draw(self, *, force: bool = False) -> None:
        if not self.tty or self.verbose:
            return
        now = self.clock()
        if not force and now - self._drawn_at < LIVE_EVERY_S:
            return
        self._drawn_at = now
        stage = self._current
        if stage is None:
            self._clear_live()
            return
        line = f"  {stage.step:<{STAGE_WIDTH}} "
        if stage.progress is not None:
            what, done, total = stage.progress
            filled = int(20 * done / total) if total else 0
            unit = f"responses by {what}" if stage.step == "completions" else what
            line += f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {unit}"
        else:
            line += stage.status or "..."
        line += f"  {now - stage.started:.0f}s"
        line = line[: max(self.width - 1, 20)]
        self._write("\r\x1b[K" + line)
        self._live = line

    # -- Python warnings -------------------------------------------------------------------------

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """`warnings.showwarning`: every warning to the log file, most also to stderr."""
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        self.file_handler.handle(
            logging.makeLogRecord(
                {
                    "name": "py.warnings",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": text,
                }
            )
        )
        if self.verbose or not _quiet_warning(category):
            self.error(text)


def _is_interrupt(error) -> bool:
    from auf_assets.cli.common import INTERRUPTS

    while error is not None:
        if error.cls_name in INTERRUPTS:
            return True
        error = error.cause
    return False


def _own_copy(stream):
    """A line-buffered copy of `stream`'s file descriptor (or the stream itself without one)."""
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return stream
    if not isinstance(stream, io.TextIOBase):
        os.close(fd)
        return stream
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _columns(stream) -> int:
    """The terminal's width: COLUMNS, else the terminal's own, else 100."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
    return columns if columns >= 40 else 100


def new_log_path(root: Path, command: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = home.logs_dir(root) / f"{command}-{stamp}.log"
    if path.exists():
        path = path.with_name(f"{command}-{stamp}-{os.getpid()}.log")
    return path


@contextlib.contextmanager
def job_console(root: Path, command: str, *, verbose: bool = False) -> Iterator[RunConsole]:
    """A `RunConsole` for the command, with warnings and library logs routed while it is open."""
    from auf_assets.reporting import progress_listener

    console = RunConsole(new_log_path(root, command), verbose=verbose)
    root_logger = logging.getLogger()
    stderr_handler = logging.StreamHandler(sys.stderr)
    stderr_handler.setLevel(logging.WARNING if verbose else logging.ERROR)
    stderr_handler.setFormatter(console.formatter)
    root_logger.addHandler(console.file_handler)
    root_logger.addHandler(stderr_handler)
    shown = warnings.showwarning
    warnings.showwarning = console.showwarning
    undo_transformers = None if verbose else _quiet_transformers()
    if not verbose:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vllm logs to the file, not stdout
        logging.getLogger("vllm").setLevel(logging.INFO)
    try:
        with progress_listener(console.progress):
            yield console
    finally:
        if undo_transformers:
            undo_transformers()
        warnings.showwarning = shown
        root_logger.removeHandler(console.file_handler)
        root_logger.removeHandler(stderr_handler)
        console.close()


def _quiet_transformers():
    """transformers' log lines to the root logger (the log file), no weight-loading bars."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
    # The GGUF de-quantisation (first use of a packaged model) draws a plain tqdm bar that the
    # switch above does not reach: silence that one too, for the command's duration.
    gguf, gguf_bar = None, None
    try:
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf

        gguf_bar = gguf.tqdm
        gguf.tqdm = functools.partial(gguf_bar, disable=True)
    except (ImportError, AttributeError):
        gguf = None

    def undo() -> None:
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        if bars:
            hf_logging.enable_progress_bar()
        if gguf is not None:
            gguf.tqdm = gguf_bar

    return undo
