"""The data behind the dataset report: one frame per figure, and the card's report section.

No Dagster and no plotting here (the `dataset_report` asset draws the frames). The inputs are
the frames a release reads for its rounds: `pairs` as `release_pairs` returns them (every
verdict, with the two responses as selected, `a` and `b`, their models, reward-model means and
the judge's `confidence`) and `completions` as `release_completions` returns them (every
response, with its reward-model mean `mu`).

`judge_people` is where a pair has both a judge's verdict and people's (the `judge+people`
label source): `pair_id`, `round_id`, `judge` (the judge's labeller name, `rubric:<model>`),
`judge_preference`, `people_preference`, `confidence`. With no such rows (every other label
source) the agreement figure and the self-preference table are left out of the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from auf_assets.core.agreement import LABELS, agreement
from auf_assets.core.judge_bias import (
    DECIDED,
    length_bias,
    response_lengths,
    self_preference,
)
from auf_assets.core.markdown import markdown_table
from auf_assets.core.release import REPORT_DIR
from auf_assets.core.release_card import model_name

REPORT_HEADING = "## Report"
# The card section the report goes in front of (every card has it: core.release_card).
REPORT_BEFORE = "## Limitations"
UNRECORDED_SOURCE = "unrecorded"  # a verdict stored before judgements had a `source` column
JUDGE_ON_PEOPLE_PAIRS = "judge, where people labelled too"

JUDGE_PEOPLE_SCHEMA = {
    "pair_id": pl.String,
    "round_id": pl.String,
    "judge": pl.String,
    "judge_preference": pl.String,
    "people_preference": pl.String,
    "confidence": pl.Float64,
}


@dataclass(frozen=True)
class Figure:
    name: str  # the file is report/<name>.png
    title: str
    caption: str


FIGURES = (
    Figure(
        "win_rates",
        "Win rate per pool member",
        "Wins over appearances among the decided pairs (ties, failures and unlabelled pairs left "
        "out); the number on each bar is the appearances.",
    ),
    Figure(
        "lengths",
        "Chosen vs rejected length",
        "Characters of the chosen and the rejected response of each decided pair; points above "
        "the diagonal chose the longer response.",
    ),
    Figure(
        "score_gaps",
        "Judge score gap",
        "The absolute difference of the two judge scores of every pair that has both, decided "
        "pairs and ties apart (people's labels carry no scores).",
    ),
    Figure(
        "outcomes",
        "Labels, ties and failures per round",
        "Pairs per round by outcome (left) and decided pairs per round by label source (right).",
    ),
    Figure(
        "confidence",
        "Judge confidence per round",
        "The judge's P(chosen is better) of its decided verdicts (ties, failures, people and "
        "oracle labels have none).",
    ),
    Figure(
        "agreement",
        "Judge and people agreement per round",
        "Accuracy and Cohen's kappa of the judge's verdicts against people's, on the pairs both "
        "labelled.",
    ),
    Figure(
        "predicted_gap",
        "Predicted gap: the acquisition method vs a random pair",
        "The reward model's mean absolute difference of the two responses' predicted rewards "
        "(mu) for the selected pairs, against the same over every pair of two responses of a "
        "prompt (what a uniformly random pick gets on average).",
    ),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)


def _with_source(pairs: pl.DataFrame) -> pl.DataFrame:
    return pairs.with_columns(pl.col("label_source").fill_null(UNRECORDED_SOURCE))


def _decided(pairs: pl.DataFrame) -> pl.DataFrame:
    return pairs.filter(pl.col("preference").is_in(DECIDED))


def win_rates(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per pool member: appearances and wins among the decided pairs, best first."""
    decided = _decided(pairs)
    sides = [
        decided.select(
            pl.col(f"member_{side}").alias("member"),
            pl.col(f"model_{side}").alias("model"),
            (pl.col("preference") == side).cast(pl.Int64).alias("win"),
        )
        for side in ("a", "b")
    ]
    return (
        pl.concat(sides)
        .group_by("member", "model")
        .agg(pl.len().cast(pl.Int64).alias("appearances"), pl.col("win").sum().alias("wins"))
        .with_columns((pl.col("wins") / pl.col("appearances")).alias("win_rate"))
        .sort(["win_rate", "member"], descending=[True, False])
    )


def chosen_rejected_lengths(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per decided pair: characters of the chosen and of the rejected response."""
    a_won = pl.col("preference") == "a"
    return (
        response_lengths(_decided(pairs))
        .select(
            "pair_id",
            "round_id",
            "label_source",
            pl.when(a_won).then("length_a").otherwise("length_b").alias("chosen_length"),
            pl.when(a_won).then("length_b").otherwise("length_a").alias("rejected_length"),
        )
        .with_columns(pl.col("chosen_length", "rejected_length").cast(pl.Int64))
    )


def score_gaps(pairs: pl.DataFrame) -> pl.DataFrame:
    """|score_a - score_b| of every decided or tied pair with two judge scores."""
    return pairs.filter(
        pl.col("preference").is_in(LABELS)
        & pl.col("score_a").is_not_null()
        & pl.col("score_b").is_not_null()
    ).select(
        "pair_id",
        "round_id",
        "label_source",
        pl.when(pl.col("preference") == "tie")
        .then(pl.lit("tie"))
        .otherwise(pl.lit("decided"))
        .alias("outcome"),
        (pl.col("score_a") - pl.col("score_b")).abs().cast(pl.Float64).alias("gap"),
    )


def outcomes_per_round(pairs: pl.DataFrame) -> pl.DataFrame:
    """Pairs per round, label source and outcome (decided, tie, failed, unlabelled)."""
    outcome = (
        pl.when(pl.col("preference").is_in(DECIDED))
        .then(pl.lit("decided"))
        .otherwise(pl.col("preference"))
    )
    return (
        pairs.group_by("round_index", "round_id", "label_source", outcome.alias("outcome"))
        .agg(pl.len().cast(pl.Int64).alias("pairs"))
        .sort("round_index", "label_source", "outcome")
    )


def confidence_rows(pairs: pl.DataFrame) -> pl.DataFrame:
    """The judge's confidence of every decided verdict that has one, with its round."""
    if "confidence" not in pairs.columns:
        return pl.DataFrame(
            schema={
                "round_index": pl.Int64,
                "round_id": pl.String,
                "label_source": pl.String,
                "confidence": pl.Float64,
            }
        )
    return (
        _decided(pairs)
        .filter(pl.col("confidence").is_not_null() & pl.col("confidence").is_not_nan())
        .select(
            pl.col("round_index").cast(pl.Int64),
            "round_id",
            "label_source",
            pl.col("confidence").cast(pl.Float64),
        )
    )


def predicted_gaps(pairs: pl.DataFrame, completions: pl.DataFrame) -> pl.DataFrame:
    """Per round: the reward model's mean |mu_a - mu_b| of the selected pairs, and of a random
    pick (the mean |mu_i - mu_j| over every pair of two responses of the same prompt, averaged
    over the round's prompts). Responses without a stored mean are left out; a round with none
    has null gaps."""
    selected = (
        pairs.group_by("round_index", "round_id")
        .agg(
            pl.col("method").unique().sort().str.join(", ").alias("method"),
            pl.len().cast(pl.Int64).alias("pairs"),
            (pl.col("mu_a") - pl.col("mu_b")).abs().mean().cast(pl.Float64).alias("selected_gap"),
        )
        .sort("round_index")
    )
    scored = completions.join(
        pairs.select("round_id", "prompt_id").unique(), on=["round_id", "prompt_id"]
    ).filter(pl.col("mu").is_not_null() & pl.col("mu").is_not_nan())
    left = scored.select("round_id", "prompt_id", "completion_id", "mu")
    per_prompt = (
        left.join(left, on=["round_id", "prompt_id"], suffix="_other")
        .filter(pl.col("completion_id") < pl.col("completion_id_other"))
        .group_by("round_id", "prompt_id")
        .agg((pl.col("mu") - pl.col("mu_other")).abs().mean().alias("gap"))
    )
    random_pick = per_prompt.group_by("round_id").agg(
        pl.col("gap").mean().cast(pl.Float64).alias("random_gap"),
        pl.len().cast(pl.Int64).alias("prompts_with_two_scores"),
    )
    return selected.join(random_pick, on="round_id", how="left").with_columns(
        pl.col("prompts_with_two_scores").fill_null(0)
    )


def agreement_per_round(judge_people: pl.DataFrame) -> pl.DataFrame:
    """Per round: pairs labelled by both, the judge's accuracy against people and Cohen's kappa.

    `judge_people` has `round_id`, `judge_preference`, `people_preference` (and `confidence`,
    not used here); only pairs where both verdicts are a / b / tie count (failed and unlabelled
    ones say nothing about agreement). Kappa is NaN where it is undefined (`core.agreement`).
    """
    both = judge_people.filter(
        pl.col("judge_preference").is_in(LABELS) & pl.col("people_preference").is_in(LABELS)
    )
    rows = []
    for (round_id,), group in both.group_by("round_id", maintain_order=True):
        measured = agreement(group["judge_preference"], group["people_preference"])
        rows.append(
            {
                "round_id": round_id,
                "pairs": measured.n,
                "accuracy": measured.accuracy,
                "kappa": measured.kappa,
            }
        )
    schema = {"round_id": pl.String, "pairs": pl.Int64, "accuracy": pl.Float64, "kappa": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("round_id")


def length_bias_rows(pairs: pl.DataFrame, judge_people: pl.DataFrame) -> pl.DataFrame:
    """The input of `length_bias`: the released verdicts by label source (no reference), and,
    where people labelled a pair the judge labelled too, the judge's verdict against theirs."""
    lengths = response_lengths(pairs).select(
        "pair_id", "label_source", "preference", "length_a", "length_b"
    )
    rows = [lengths.with_columns(pl.lit(None, pl.String).alias("reference"))]
    if judge_people.height:
        rows.append(
            judge_people.join(lengths.drop("label_source", "preference"), on="pair_id").select(
                "pair_id",
                pl.lit(JUDGE_ON_PEOPLE_PAIRS).alias("label_source"),
                pl.col("judge_preference").alias("preference"),
                "length_a",
                "length_b",
                pl.col("people_preference").alias("reference"),
            )
        )
    return pl.concat(rows)


def judge_model(labeller: str) -> str:
    """The model of a judge's labeller name (`rubric:<model>` -> `<model>`, no directories)."""
    _, sep, model = labeller.partition(":")
    return model_name(model if sep else labeller)


def self_preference_rows(pairs: pl.DataFrame, judge_people: pl.DataFrame) -> pl.DataFrame:
    """`core.judge_bias.self_preference` per judge, on the pairs people labelled too."""
    if judge_people.height == 0:
        return pl.DataFrame()
    models = pairs.select("pair_id", "member_a", "member_b", "model_a", "model_b")
    verdicts = judge_people.join(models, on="pair_id")
    frames = [
        self_preference(group, judge_model(judge)).select(pl.lit(judge).alias("judge"), pl.all())
        for (judge,), group in verdicts.group_by("judge", maintain_order=True)
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


def report_tables(
    pairs: pl.DataFrame, completions: pl.DataFrame, judge_people: pl.DataFrame | None = None
) -> dict[str, pl.DataFrame]:
    """Every figure's frame (by figure name), plus `length_bias` and `self_preference`."""
    pairs = _with_source(pairs)
    judge_people = (
        pl.DataFrame(schema=JUDGE_PEOPLE_SCHEMA) if judge_people is None else judge_people
    )
    if missing := sorted(set(JUDGE_PEOPLE_SCHEMA) - set(judge_people.columns)):
        raise ValueError(f"judge_people misses the columns {missing}")
    return {
        "win_rates": win_rates(pairs),
        "lengths": chosen_rejected_lengths(pairs),
        "score_gaps": score_gaps(pairs),
        "outcomes": outcomes_per_round(pairs),
        "confidence": confidence_rows(pairs),
        "agreement": agreement_per_round(judge_people).join(
            pairs.select("round_id", pl.col("round_index").cast(pl.Int64)).unique(),
            on="round_id",
            how="left",
        ),
        "predicted_gap": predicted_gaps(pairs, completions),
        "length_bias": length_bias(length_bias_rows(pairs, judge_people)),
        "self_preference": self_preference_rows(pairs, judge_people),
    }


def drawn_figures(tables: Mapping[str, pl.DataFrame]) -> tuple[Figure, ...]:
    """The figures a report has: every one, except agreement where nothing measures it."""
    return tuple(f for f in FIGURES if f.name != "agreement" or tables["agreement"].height)


def figure_path(figure: Figure) -> str:
    """Where a figure lives in the version (a relative path: it renders on the Hub)."""
    return f"{REPORT_DIR}/{figure.name}.png"


# -- the card ------------------------------------------------------------------------------------


def report_section(figures: tuple[Figure, ...], tables: Mapping[str, pl.DataFrame]) -> str:
    """The card's report section: each figure with its caption, then the measured judge biases."""
    lines = [
        REPORT_HEADING,
        "",
        f"Plots of this version, drawn from its rounds (the images are in `{REPORT_DIR}/`).",
    ]
    for figure in figures:
        lines += ["", f"### {figure.title}", "", f"![{figure.title}]({figure_path(figure)})"]
        lines += ["", figure.caption]
    bias = tables["length_bias"]
    if bias.height:
        lines += [
            "",
            "### Length bias",
            "",
            "How often the chosen response is the longer one, per label source, against a "
            "base rate: how often the longer one is better by people's labels of the same pairs "
            "where there are some, else even odds.",
            "",
            markdown_table(
                bias.select(
                    pl.col("label_source").alias("label source"),
                    pl.col("decided").alias("pairs"),
                    pl.col("chosen_longer").alias("chose the longer"),
                    pl.col("chosen_longer_share").round(3).alias("share"),
                    pl.col("base_rate").round(3).alias("base rate"),
                    pl.col("base_rate_from").alias("base rate from"),
                ),
                max_rows=20,
            ),
        ]
    preference = tables["self_preference"]
    if preference.height:
        lines += [
            "",
            "### Self-preference",
            "",
            "Each member's win rate by the judge and by people on the pairs both labelled; a "
            "member of the judge's model family that the judge favours more than people do is "
            "a sign of self-preference.",
            "",
            markdown_table(
                preference.select(
                    pl.col("judge").map_elements(judge_model, return_dtype=pl.String),
                    "member",
                    pl.col("model").map_elements(model_name, return_dtype=pl.String),
                    pl.col("same_family").alias("judge's family"),
                    "appearances",
                    pl.col("judge_win_rate").round(3).alias("win rate (judge)"),
                    pl.col("people_win_rate").round(3).alias("win rate (people)"),
                ),
                max_rows=50,
            ),
        ]
    return "\n".join(lines) + "\n"


def card_with_report(card: str, section: str) -> str:
    """`card` with its report section replaced by `section` (put in front of the limitations,
    or at the end of a card without them)."""
    start = card.find(f"\n{REPORT_HEADING}\n")
    if start >= 0:
        end = card.find("\n## ", start + 1)
        card = card[: start + 1] + (card[end + 1 :] if end >= 0 else "")
    anchor = card.find(f"\n{REPORT_BEFORE}\n")
    if anchor < 0:
        return card.rstrip("\n") + "\n\n" + section
    return card[: anchor + 1] + section + "\n" + card[anchor + 1 :]
