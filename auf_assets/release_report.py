"""`dataset_report`: plots of the newest dataset version, written into the version itself.

preference_dataset -> dataset_report -> hub_dataset. The report reads the version's rounds from
the store, draws one PNG per figure (`auf_assets.core.dataset_report` makes each figure's
frame), writes them to `report/` in the version folder, puts a report section with the images
(relative links, so the Hub renders them) and the measured judge biases in the card, and lists
the new files in the manifest (`core.release.add_report`). hub_dataset then pushes them with
the rest. The figures are in the asset's metadata too, for the Dagster UI.

The release group's name lives here (auf_assets.release imports it with this asset), so this
module needs nothing from auf_assets.release.
"""

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg
import polars as pl

from auf_assets.core.dataset_report import (
    JUDGE_PEOPLE_SCHEMA,
    card_with_report,
    drawn_figures,
    report_section,
    report_tables,
)
from auf_assets.core.judge_bias import DECIDED
from auf_assets.core.judge_vs_people import comparison_frame
from auf_assets.core.markdown import markdown_table
from auf_assets.core.release import CARD, CONFIG_DIRS, ReleaseError, add_report, verify_release
from auf_assets.core.release_card import model_name
from auf_assets.reporting import figure_png, png_markdown
from resources.store import DuckDBStore

GROUP = "release"
REPORT_CODE_VERSION = "1"
FIGURE_SIZE = (6.0, 3.2)
DPI = 100
MAX_ROUND_TICKS = 12
OUTCOME_COLOURS = {"decided": "#4a7", "tie": "#db4", "failed": "#c44", "unlabelled": "#999"}
SOURCE_COLOURS = ("#37a", "#e83", "#6a4", "#a5c", "#888", "#c44")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(height: float = FIGURE_SIZE[1], columns: int = 1):
    return _pyplot().subplots(1, columns, figsize=(FIGURE_SIZE[0], height), dpi=DPI)


def _nothing(message: str) -> bytes:
    """A figure that says why there is nothing to draw (a small home, another label source)."""
    fig, ax = _figure(1.2)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, wrap=True)
    ax.set_axis_off()
    return figure_png(fig)


def _rounds_axis(ax, rounds: pl.Series) -> None:
    """Round numbers as ticks: each round while there are few, else about a dozen integers."""
    from matplotlib.ticker import MaxNLocator

    shown = sorted(set(rounds.drop_nulls().to_list()))
    if len(shown) <= MAX_ROUND_TICKS:
        ax.set_xticks(shown)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=MAX_ROUND_TICKS))
    if shown:
        ax.set_xlim(shown[0] - 0.6, shown[-1] + 0.6)
    ax.set_xlabel("round")


def plot_win_rates(rows: pl.DataFrame) -> bytes:
    if rows.height == 0:
        return _nothing("no decided pair: no member has a win rate")
    labels = [
        member if model_name(model) == member else f"{member} ({model_name(model)})"
        for member, model in zip(rows["member"], rows["model"], strict=True)
    ]
    fig, ax = _figure(max(1.6, 0.32 * rows.height + 0.9))
    positions = list(range(rows.height))[::-1]  # the best member on top
    ax.barh(positions, rows["win_rate"].to_list(), color="#37a")
    for y, rate, n in zip(positions, rows["win_rate"], rows["appearances"], strict=True):
        ax.text(min(rate + 0.01, 0.9), y, f"n={n}", va="center", fontsize=7)
    ax.set_yticks(positions, labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="#999", linewidth=0.8, linestyle="--")
    ax.set_xlabel("win rate among decided pairs")
    return figure_png(fig)


def plot_lengths(rows: pl.DataFrame) -> bytes:
    if rows.height == 0:
        return _nothing("no decided pair: no chosen or rejected response")
    fig, ax = _figure()
    for i, (source,) in enumerate(rows.select("label_source").unique().sort("label_source").rows()):
        part = rows.filter(pl.col("label_source") == source)
        ax.scatter(
            part["rejected_length"].to_list(),
            part["chosen_length"].to_list(),
            s=10,
            alpha=0.6,
            color=SOURCE_COLOURS[i % len(SOURCE_COLOURS)],
            label=source,
        )
    top = max(int(rows["chosen_length"].max()), int(rows["rejected_length"].max()), 1)
    ax.plot([0, top], [0, top], color="#999", linewidth=0.8, linestyle="--")
    longer = int((rows["chosen_length"] > rows["rejected_length"]).sum())
    ax.set_title(f"chosen is the longer in {longer} of {rows.height} pairs", fontsize=9)
    ax.set_xlabel("rejected response (characters)")
    ax.set_ylabel("chosen (characters)")
    ax.legend(fontsize=7, loc="upper left")
    return figure_png(fig)


def plot_score_gaps(rows: pl.DataFrame) -> bytes:
    if rows.height == 0:
        return _nothing("no pair has two judge scores (people's labels carry none)")
    fig, ax = _figure()
    outcomes = [o for o in ("decided", "tie") if (rows["outcome"] == o).any()]
    values = [rows.filter(pl.col("outcome") == o)["gap"].to_list() for o in outcomes]
    top = max(float(rows["gap"].max()), 1e-6)
    ax.hist(
        values,
        bins=20,
        range=(0.0, top),
        stacked=True,
        color=[OUTCOME_COLOURS[o] for o in outcomes],
        label=outcomes,
    )
    ax.set_xlabel("|score A - score B|")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    return figure_png(fig)


def _stacked_bars(ax, rows: pl.DataFrame, key: str, colours: Mapping[str, str]) -> None:
    bottom: dict[int, int] = {}
    for value in colours:
        part = rows.filter(pl.col(key) == value).group_by("round_index").agg(pl.col("pairs").sum())
        if part.height == 0:
            continue
        xs, heights = part["round_index"].to_list(), part["pairs"].to_list()
        ax.bar(
            xs,
            heights,
            bottom=[bottom.get(x, 0) for x in xs],
            color=colours[value],
            label=value,
        )
        for x, h in zip(xs, heights, strict=True):
            bottom[x] = bottom.get(x, 0) + h
    from matplotlib.ticker import MaxNLocator

    _rounds_axis(ax, rows["round_index"])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)


def plot_outcomes(rows: pl.DataFrame) -> bytes:
    if rows.height == 0:
        return _nothing("no verdict in these rounds")
    fig, (left, right) = _figure(columns=2)
    _stacked_bars(left, rows, "outcome", OUTCOME_COLOURS)
    left.set_title("by outcome", fontsize=9)
    decided = rows.filter(pl.col("outcome") == "decided")
    sources = decided["label_source"].unique().sort().to_list()
    colours = {s: SOURCE_COLOURS[i % len(SOURCE_COLOURS)] for i, s in enumerate(sources)}
    if decided.height:
        _stacked_bars(right, decided, "label_source", colours)
        right.set_title("decided, by label source", fontsize=9)
    else:
        right.text(0.5, 0.5, "no decided pair", ha="center", va="center", fontsize=9)
        right.set_axis_off()
    return figure_png(fig)


def plot_confidence(rows: pl.DataFrame) -> bytes:
    if rows.height == 0:
        return _nothing("no verdict carries a judge confidence (people, the oracle, old rounds)")
    fig, ax = _figure()
    per_round = rows.group_by("round_index").agg(pl.col("confidence")).sort("round_index")
    ax.boxplot(
        per_round["confidence"].to_list(),
        positions=per_round["round_index"].to_list(),
        widths=0.6,
        showfliers=False,
        manage_ticks=False,
    )
    _rounds_axis(ax, per_round["round_index"])
    ax.set_ylim(min(0.45, float(rows["confidence"].min()) - 0.02), 1.02)
    ax.set_ylabel("P(chosen is better)")
    return figure_png(fig)


def plot_agreement(rows: pl.DataFrame) -> bytes:
    """Accuracy and Cohen's kappa of the judge against people, per round."""
    rows = rows.filter(pl.col("round_index").is_not_null()).sort("round_index")
    if rows.height == 0:
        return _nothing("no pair has both a judge's verdict and people's")
    fig, ax = _figure()
    ax.plot(rows["round_index"], rows["accuracy"], marker="o", color="#37a", label="accuracy")
    ax.plot(rows["round_index"], rows["kappa"], marker="s", color="#e83", label="Cohen's kappa")
    _rounds_axis(ax, rows["round_index"])
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("judge vs people")
    ax.axhline(0, color="#999", linewidth=0.8)
    ax.legend(fontsize=7)
    return figure_png(fig)


def plot_predicted_gap(rows: pl.DataFrame) -> bytes:
    known = rows.filter(pl.col("selected_gap").is_not_null() | pl.col("random_gap").is_not_null())
    if known.height == 0:
        return _nothing("no reward-model mean is stored for these rounds' responses")
    fig, ax = _figure()
    methods = ", ".join(sorted(set(", ".join(known["method"]).split(", "))))
    for column, label, colour in (
        ("selected_gap", f"selected ({methods})", "#37a"),
        ("random_gap", "a random pair", "#999"),
    ):
        part = known.filter(pl.col(column).is_not_null())
        ax.plot(part["round_index"], part[column], marker="o", color=colour, label=label)
    _rounds_axis(ax, known["round_index"])
    ax.set_ylabel("mean |mu_a - mu_b|")
    ax.legend(fontsize=7)
    return figure_png(fig)


PLOTS: dict[str, Callable[[pl.DataFrame], bytes]] = {
    "win_rates": plot_win_rates,
    "lengths": plot_lengths,
    "score_gaps": plot_score_gaps,
    "outcomes": plot_outcomes,
    "confidence": plot_confidence,
    "agreement": plot_agreement,
    "predicted_gap": plot_predicted_gap,
}


def _released_pair_ids(folder: Path) -> set[str]:
    shards = sorted((folder / CONFIG_DIRS["default"]).glob("*.parquet"))
    return set(pl.read_parquet(shards, columns=["pair_id"])["pair_id"]) if shards else set()


def judge_people_pairs(store: DuckDBStore, pairs: pl.DataFrame) -> pl.DataFrame:
    """The `judge_people` frame of `core.dataset_report`: the `judge+people` screening verdicts
    of the released rounds against people's verdicts as released (the pairs people decided)."""
    rounds = pairs["round_id"].unique().to_list()
    decided = pairs.filter(pl.col("label_source") == "people")
    people = dict(zip(decided["pair_id"], decided["preference"], strict=True))
    frame = comparison_frame(store.screening_of_rounds(rounds), people)
    return frame.select(
        "pair_id",
        "round_id",
        pl.col("labeller").alias("judge"),
        pl.col("judge").alias("judge_preference"),
        pl.col("people").alias("people_preference"),
        "confidence",
    ).cast(JUDGE_PEOPLE_SCHEMA)


def write_dataset_report(
    store: DuckDBStore, judge_people: pl.DataFrame | None = None, log=print
) -> dict:
    """Draw the report of the newest built version and put it into the version (and its new
    manifest hash into the store); returns what the asset reports. Raises ReleaseError when no
    version is built, for a damaged version, or for one whose rounds' verdicts changed in the
    store since it was built (the report would describe other data).

    `judge_people`: pairs with both a judge's and people's verdict (`core.dataset_report`), for
    the agreement figure and the self-preference table; None reads them from the store
    (`judge_people_pairs`).
    """
    release = store.latest_release()
    if release is None:
        raise ReleaseError("no dataset version is built yet: materialise preference_dataset first")
    folder = store.root / release["path"]
    manifest = verify_release(folder)
    rounds = manifest["rounds"]
    pairs = store.release_pairs(rounds)
    stored = set(pairs.filter(pl.col("preference").is_in(DECIDED))["pair_id"])
    released = _released_pair_ids(folder)
    if stored != released:
        raise ReleaseError(
            f"the stored verdicts of {manifest['version']} changed since it was built "
            f"({len(stored ^ released)} labelled pairs differ): materialise preference_dataset "
            "again, then the report"
        )
    if judge_people is None:
        judge_people = judge_people_pairs(store, pairs)
    tables = report_tables(pairs, store.release_completions(rounds), judge_people)
    figures = drawn_figures(tables)
    started = time.perf_counter()
    pngs = {f"{f.name}.png": PLOTS[f.name](tables[f.name]) for f in figures}
    seconds = time.perf_counter() - started
    log(f"drew {len(pngs)} figures of {manifest['version']} in {seconds:.1f} s")
    card = card_with_report(
        (folder / CARD).read_text(encoding="utf-8"), report_section(figures, tables)
    )
    files = add_report(folder, pngs, card)
    store.record_release({**release, "manifest_sha256": files.manifest_sha256})
    return {
        "version": manifest["version"],
        "folder": folder,
        "figures": figures,
        "pngs": pngs,
        "tables": tables,
        "decided_pairs": len(stored),
        "manifest_sha256": files.manifest_sha256,
    }


@dg.asset(
    group_name=GROUP,
    deps=[dg.AssetKey("preference_dataset")],
    kinds={"matplotlib", "huggingface"},
    code_version=REPORT_CODE_VERSION,
    description="Plots of the newest dataset version, in the version itself (report/*.png, "
    "shown by the card) and in this asset's metadata: win rate per pool member, chosen vs "
    "rejected length, judge score gaps, labels/ties/failures per round and by source, judge "
    "confidence per round, judge-people agreement per round (where both labelled), and the "
    "acquisition method's predicted gap against a random pair; plus the measured length bias.",
)
def dataset_report(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
    try:
        report = write_dataset_report(store, log=context.log.info)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    tables = report["tables"]
    return dg.MaterializeResult(
        metadata={
            "version": report["version"],
            "path": dg.MetadataValue.path(str(report["folder"])),
            "dagster/row_count": report["decided_pairs"],
            "rows_per_figure": dg.MetadataValue.json(
                {f.name: tables[f.name].height for f in report["figures"]}
            ),
            "manifest_sha256": report["manifest_sha256"],
            "length_bias": dg.MetadataValue.md(markdown_table(tables["length_bias"], 20)),
            **{
                f.name: png_markdown(report["pngs"][f"{f.name}.png"], f.title)
                for f in report["figures"]
            },
        }
    )
