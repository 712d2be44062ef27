"""The dataset card of a release: what the data is, how it was made, its limits. No Dagster.

`release_facts` reads the frames the store returns for the released rounds; `render_card` turns
them into the README.md of the version (YAML header with `configs` via huggingface_hub's card
classes, then the body). Only what is known is written: no dollars without a price table, no
GPU-hours where GPU time was not measured, no license unless one was chosen, no split that has
no rows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from auf_assets.core.costs import PriceTable, price_rows
from auf_assets.core.judging import ASPECTS
from auf_assets.core.release import LABELLED, ReleaseOptions, config_entries

DEMO_ORIGIN = "the built-in demo prompts"
# Judges below this many parameters (read from the model's name) get a limitation line.
SMALL_JUDGE_PARAMS = 7e9
# A dataset below this many labelled pairs is called small in the limitations.
SMALL_DATASET_PAIRS = 1000
# Labellers named "<kind>:<model>" by the judges (resources/judge.py, resources/reward_judge.py).
MODEL_JUDGES = {"llm_judge": "rubric:", "reward_model_judge": "reward_model:"}
METHOD_PAPER = {
    "title": "ActiveUltraFeedback: Efficient Preference Data Generation using Active Learning",
    "arxiv": "2603.09692",
    "venue": "International Conference on Machine Learning (ICML)",
    "venue_short": "ICML",
    "year": "2026",
}
# Selection methods of other papers, cited by arXiv id when a release used them.
SELECTION_PAPERS = {
    "sharp": ("SHARP / W-SHARP", "2503.22137"),
    "wsharp": ("SHARP / W-SHARP", "2503.22137"),
    "activedpo": ("ActiveDPO", "2505.19241"),
}


def size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < bound:
            return label
    return "n>10M"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _origin_name(origin: str) -> str:
    """Where prompts came from, without this machine's directories (a Hub id stays as it is)."""
    from auf_assets.core.prompts import DEMO_PROMPTS_PATH

    if origin == str(DEMO_PROMPTS_PATH):
        return DEMO_ORIGIN
    if Path(origin).is_absolute():  # "/home/me/prompts.jsonl [split=train]" -> its last part
        return Path(origin).name
    return origin


def model_name(model: str) -> str:
    """A model as the card shows it: a local directory by its last part (no machine paths)."""
    return Path(model).name if Path(model).is_absolute() else model


def _labeller_name(labeller: str) -> str:
    kind, sep, model = labeller.partition(":")
    return f"{kind}:{model_name(model)}" if sep and model.startswith("/") else labeller


def parameter_count(model: str) -> float | None:
    """Parameters as a model's name states them (`SmolLM2-135M` -> 1.35e8), else None."""
    match = re.search(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z0-9])", model.lower())
    if not match:
        return None
    return float(match.group(1)) * (1e6 if match.group(2) == "m" else 1e9)


# -- facts --------------------------------------------------------------------------------------


def release_facts(
    pairs: pl.DataFrame,
    completions: pl.DataFrame,
    reward_models: pl.DataFrame,
    rows: Mapping[str, Mapping[str, int]],
    left_out: Mapping[str, int],
) -> dict:
    """What the card says about how the data was made, all read from the stored rounds."""
    members = (
        completions.group_by("member", "model", "sampling")
        .agg(pl.len().alias("responses"))
        .sort("member", "model")
    )
    labelled = pairs.filter(pl.col("preference").is_in(list(LABELLED)))
    judged = pl.concat([pairs["completion_a"], pairs["completion_b"]]).n_unique()
    methods = pairs.group_by("method", "beta").agg(pl.len().alias("pairs")).sort("pairs", "method")
    sources = (
        pairs.group_by("label_source", "labeller").agg(pl.len().alias("pairs")).sort("labeller")
    )
    annotators = sorted(
        {
            name
            for labeller in pairs.filter(pl.col("label_source") == "people")["labeller"]
            for name in labeller.removeprefix("people").lstrip(":").split(",")
            if name
        }
    )
    origins = sorted({_origin_name(o) for o in pairs["prompt_origin"].drop_nulls()})
    rounds = pairs.unique("round_id", maintain_order=True)
    principles = Counter(completions["principle"].to_list())
    return {
        "rounds": rounds["round_id"].to_list(),
        "round_indices": rounds["round_index"].to_list(),
        "prompts": int(completions["prompt_id"].n_unique()),
        "prompt_origins": origins,
        "prompt_sources": dict(Counter(completions.unique("prompt_id")["source"]).most_common()),
        "members": [
            {**m, "model": model_name(m["model"]), "model_source": m["model"]}
            for m in members.to_dicts()
        ],
        "principles": {p: n for p, n in principles.most_common() if p is not None},
        "without_principle": principles.get(None, 0),
        "responses": int(completions.height),
        "responses_judged": int(judged),
        "pairs": int(pairs.height),
        # pairs picked by the first round's fresh heads (no reward model trained yet)
        "fresh_head_pairs": int(pairs["reward_model_round"].is_null().sum()),
        "labelled_pairs": int(labelled.height),
        "left_out": dict(left_out),
        "methods": methods.to_dicts(),
        "label_sources": [
            {**s, "labeller": _labeller_name(s["labeller"]), "labeller_source": s["labeller"]}
            for s in sources.to_dicts()
        ],
        "annotators": annotators,
        "reward_models": [
            {**m, "encoder": model_name(m["encoder"] or "")} for m in reward_models.to_dicts()
        ],
        "rows": {c: dict(s) for c, s in rows.items()},
        "warnings": [],
    }


def cost_facts(usage: pl.DataFrame, prices: PriceTable | None) -> dict:
    """The ledger of the released rounds by step and model, for the card.

    `gpu_hours` is None for a model whose GPU time was never measured (CPU, or a server whose
    config does not say its GPUs); `dollars` is None everywhere without a price table.
    """
    if usage.height == 0:
        return {"by_model": []}
    priced = price_rows(usage, prices) if prices is not None else usage
    by_model = (
        priced.group_by("step", "model")
        .agg(
            pl.col("requests").sum().cast(pl.Int64),
            pl.col("prompt_tokens").sum().cast(pl.Int64),
            pl.col("completion_tokens").sum().cast(pl.Int64),
            # sum() of only nulls is 0: keep "not measured" apart from "0 s measured"
            pl.when(pl.col("gpu_seconds").is_not_null().any())
            .then(pl.col("gpu_seconds").sum() / 3600.0)
            .alias("gpu_hours"),
            *([pl.col("dollars").sum()] if prices is not None else []),
        )
        .sort("step", "model")
    )
    rows = [
        {**row, "model": model_name(row["model"]), "dollars": row.get("dollars")}
        for row in by_model.to_dicts()
    ]
    known_gpu = [r["gpu_hours"] for r in rows if r["gpu_hours"] is not None]
    return {
        "by_model": rows,
        "requests": sum(r["requests"] for r in rows),
        "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
        "gpu_hours": sum(known_gpu) if known_gpu else None,
        "dollars": sum(r["dollars"] for r in rows) if prices is not None else None,
        "price_table": Path(prices.source).name if prices is not None else None,
    }


# -- the card -----------------------------------------------------------------------------------


def render_card(facts: Mapping, options: ReleaseOptions, *, software: str) -> str:
    """The dataset card: YAML metadata (via huggingface_hub's card classes) and the body."""
    from huggingface_hub import DatasetCard, DatasetCardData

    n_pairs = sum(facts["rows"]["default"].values())
    data = DatasetCardData(
        license=options.license or None,
        language=list(options.language) or None,
        task_categories=["text-generation"],
        size_categories=[size_category(n_pairs)],
        pretty_name=options.pretty_name or None,
        tags=["dpo", "preference", "active-learning", "rlhf", "synthetic"],
        configs=config_entries(facts["rows"]),
    )
    body = "\n".join(
        [
            *_intro(facts, options),
            *_contents(facts, options),
            *_how_it_was_made(facts),
            *_cost(facts.get("cost") or {}),
            *_reward_model(facts),
            *_limitations(facts, options),
            *_use(facts, options),
            *_citation(facts),
            *_provenance(software, options),
        ]
    )
    card = DatasetCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body=body
    )
    return str(card)


def round_span(rounds: Sequence[str], indices: Sequence[int]) -> str:
    """`round-0003`, `round-0001 to round-0004`, or the rounds named when there are gaps."""
    if len(rounds) == 1:
        return rounds[0]
    if sorted(indices) == list(range(min(indices), max(indices) + 1)):
        return f"{rounds[0]} to {rounds[-1]}"
    if len(rounds) <= 3:
        return ", ".join(rounds)
    return f"{len(rounds)} rounds from {rounds[0]} to {rounds[-1]}"


def _intro(facts: Mapping, options: ReleaseOptions) -> list[str]:
    rounds = facts["rounds"]
    span = round_span(rounds, facts["round_indices"])
    title = options.pretty_name or f"Active preference data, {span}"
    return [
        f"# {title}",
        "",
        f"Preference pairs (prompt, chosen, rejected) chosen by active learning "
        f"(ActiveUltraFeedback-style) over {_n(len(rounds), 'round')}: {', '.join(rounds)}. "
        f"Each round a pool of models answered a batch of prompts, an uncertainty-aware reward "
        f"model scored every response, an acquisition function picked one pair per prompt, and "
        f"only that pair was labelled.",
    ]


def _contents(facts: Mapping, options: ReleaseOptions) -> list[str]:
    train, test = options.splits
    rows = facts["rows"]
    what = {
        "default": "a labelled pair (Hugging Face preference layout + provenance)",
        "trl": "the same pair as TRL's DPOTrainer/RewardTrainer take it",
        "completions": "a prompt with all its responses (UltraFeedback layout)",
    }
    out = ["", "## Contents", ""]
    out.append(
        _table(
            ["config", "what a row is", train, test],
            [
                [f"`{config}`", what[config], *(splits.get(s, "none") for s in (train, test))]
                for config, splits in rows.items()
            ],
        )
    )
    out += [
        "",
        f"The split is by prompt (a hash of `prompt_id`; {options.test_fraction:.0%} of prompts "
        f"in `{test}`), so no prompt is in both splits.",
    ]
    if not rows["default"].get(test):
        out.append(
            f"There is no `{test}` split, so no held-out pairs: it would have been empty (a "
            "split without rows is left out so that the dataset loads)."
        )
    if not rows["default"].get(train):
        out.append(f"There is no `{train}` split: every released prompt fell into `{test}`.")
    left = facts["left_out"]
    out += [
        "",
        f"Of {facts['pairs']} selected pairs, {facts['labelled_pairs']} have a preference and "
        f"are released; left out: {_n(left['tie'], 'tie')}, {left['failed']} where the judge "
        f"failed, {left['unlabelled']} not labelled.",
    ]
    return out


def _how_it_was_made(facts: Mapping) -> list[str]:
    out = ["", "## How it was made", "", "### Prompts", ""]
    line = f"{_n(facts['prompts'], 'prompt')}"
    if facts["prompt_origins"]:
        line += ", from " + ", ".join(
            o if o == DEMO_ORIGIN else f"`{o}`" for o in facts["prompt_origins"]
        )
    if facts["prompt_sources"]:
        line += "; by source: " + ", ".join(
            f"{s} ({n})" for s, n in facts["prompt_sources"].items()
        )
    out.append(line + ".")
    out += ["", "### Model pool", ""]
    out.append(
        _table(
            ["member", "model", "sampling", "responses"],
            [
                [
                    m["member"],
                    f"`{m['model']}`",
                    f"`{m['sampling']}`" if m["sampling"] else "",
                    m["responses"],
                ]
                for m in facts["members"]
            ],
        )
    )
    out += ["", *_system_prompts(facts)]
    out += ["", "### Pair selection", ""]
    out.append(
        _table(
            ["acquisition method", "beta", "pairs"],
            [[m["method"], m["beta"], m["pairs"]] for m in facts["methods"]],
        )
    )
    return out + _labels(facts)


def _system_prompts(facts: Mapping) -> list[str]:
    principles, without = facts["principles"], facts["without_principle"]
    if not principles:
        return [
            "The responses were read from a precomputed pool: no system prompt of this "
            "pipeline's was used, and none is recorded."
        ]
    line = (
        "Every generation request carried a system prompt that stresses one principle, "
        "UltraFeedback style, drawn per request (prompt and member) with weights that depend "
        "on the prompt's source: "
        + ", ".join(f"{p.replace('_', ' ')} ({_n(n, 'response')})" for p, n in principles.items())
        + ". Each response's principle is in `chosen_principle` / `rejected_principle`; the "
        "`completions` config has every response with its system prompt."
    )
    if without:
        line += f" {_n(without, 'response')} came from a precomputed pool, without one."
    return [line]


def _labels(facts: Mapping) -> list[str]:
    out = ["", "### Labels", ""]
    out.append(
        _table(
            ["label source", "labeller", "pairs"],
            [[s["label_source"], f"`{s['labeller']}`", s["pairs"]] for s in facts["label_sources"]],
        )
    )
    sources = {s["label_source"] for s in facts["label_sources"]}
    if "llm_judge" in sources:
        out += [
            "",
            "The LLM judge rated each response of a pair on four aspects with a 1-5 rubric "
            f"({', '.join(ASPECTS)}); an aspect's score is the expectation of the digit under "
            "the judge's first-token distribution, the response's score the mean of the four. "
            "The per-aspect scores are in `chosen_aspect_scores` / `rejected_aspect_scores`.",
        ]
    if "people" in sources:
        out.append("")
        out.append(
            f"People labelled pairs shown as A/B in random order ({len(facts['annotators'])} "
            f"annotator id(s): {', '.join(facts['annotators'])}); several labels of a pair were "
            "resolved into one verdict."
        )
    out += [
        "",
        f"Labels spent: {facts['responses_judged']} responses judged out of "
        f"{facts['responses']} generated; labelling every response would have taken "
        f"{facts['responses'] / max(facts['responses_judged'], 1):.1f}x as many.",
    ]
    return out


def _cost(cost: Mapping) -> list[str]:
    if not cost.get("by_model"):
        return []
    gpu = cost["gpu_hours"] is not None
    dollars = cost["dollars"] is not None
    header = ["step", "model", "requests", "prompt tok", "completion tok"]
    header += ["GPU-hours"] * gpu + ["$"] * dollars
    rows = []
    for c in cost["by_model"]:
        row = [
            c["step"],
            f"`{c['model']}`",
            f"{c['requests']:,}",
            f"{c['prompt_tokens']:,}",
            f"{c['completion_tokens']:,}",
        ]
        if gpu:
            row.append("not measured" if c["gpu_hours"] is None else f"{c['gpu_hours']:.3f}")
        if dollars:
            row.append(f"{c['dollars']:.2f}")
        rows.append(row)
    total = f"In all: {cost['requests']:,} model requests and {cost['tokens']:,} tokens"
    if gpu:
        total += f", {cost['gpu_hours']:.3f} GPU-hours where GPU time was measured"
    if dollars:
        total += f", ${cost['dollars']:.2f} at the prices of `{cost['price_table']}`"
    total += "; every attempt of every step counted (from the pipeline's ledger)."
    return ["", "### What it cost", "", _table(header, rows), "", total]


def _reward_model(facts: Mapping) -> list[str]:
    if not facts["reward_models"]:
        return []
    last = facts["reward_models"][-1]
    return [
        "",
        "### Reward model used for selection",
        "",
        f"An anchored ensemble of MLP heads on frozen `{last['encoder']}` features, retrained "
        f"after every round on a replay buffer of labelled pairs ({last['pairs_trained']} "
        f"pairs at {last['round_id']}). Each pair records the mean and spread of the ensemble "
        "for both responses at selection time (`*_reward_mean`, `*_reward_std`) and which "
        "round's model gave them (`reward_model_round`, empty for the first round's fresh "
        "heads).",
    ]


def _limitations(facts: Mapping, options: ReleaseOptions) -> list[str]:
    items = []
    pool_members: dict[str, list[str]] = {}
    for m in facts["members"]:
        pool_members.setdefault(m["model"].lower(), []).append(m["member"])
    for source in facts["label_sources"]:
        prefix = MODEL_JUDGES.get(source["label_source"])
        if prefix is None or not source["labeller_source"].startswith(prefix):
            continue
        judge = model_name(source["labeller_source"][len(prefix) :])
        items.append(
            f"The labels of {_n(source['pairs'], 'pair')} are the opinion of the model "
            f"`{judge}`, not of people: they carry its biases (for example towards longer "
            "answers or its own style)."
        )
        if judge.lower() in pool_members:
            members = ", ".join(pool_members[judge.lower()])
            items.append(
                f"The judge `{judge}` also wrote responses in the pool (member(s) {members}): "
                "a judge tends to prefer answers like its own, so those may be favoured."
            )
        params = parameter_count(judge)
        if params is not None and params < SMALL_JUDGE_PARAMS:
            size = f"{params / 1e9:g}B" if params >= 1e9 else f"{params / 1e6:g}M"
            items.append(
                f"The judge `{judge}` is a small model ({size} parameters, as its name says): "
                "expect noisy labels; a larger judge gives better ones."
            )
    if any(s["label_source"] == "oracle" for s in facts["label_sources"]):
        items.append(
            "Some labels come from stored oracle scores (a simulated labeller): they are only "
            "as good as those scores."
        )
    if facts["annotators"]:
        items.append(
            f"People's labels come from {_n(len(facts['annotators']), 'annotator')}; how much "
            "they agree is not measured here."
        )
    rounds = len(facts["rounds"])
    built = "Built from one round" if rounds == 1 else f"Built from {rounds} rounds"
    fresh, pairs = facts["fresh_head_pairs"], facts["pairs"]
    if fresh == pairs:
        items.append(
            f"{built}: every pair was picked by a reward model that had seen no labels yet "
            "(fresh heads), so the selection is close to random; the benefit of active learning "
            "shows over many rounds."
        )
    elif fresh:
        items.append(
            f"{built}: {fresh} of the {pairs} pairs (the first round's) were picked by fresh "
            "heads that had seen no labels, close to random; the reward model was retrained "
            "after every round on the labels so far, so early selections are the weakest."
        )
    else:
        items.append(
            f"{built}: the reward model that picked the pairs was retrained after every round "
            "on the labels so far; with few rounds it has seen few labels."
        )
    if facts["labelled_pairs"] < SMALL_DATASET_PAIRS:
        items.append(
            f"{_n(facts['labelled_pairs'], 'labelled pair')} is a small dataset: enough to "
            "look at the method, too few to train a model on by itself."
        )
    if not facts["rows"]["default"].get(options.test_split):
        items.append(
            f"No `{options.test_split}` split: there are no held-out pairs to evaluate a model "
            "trained on this data."
        )
    return ["", "## Limitations", "", *(f"- {item}" for item in items)]


def _use(facts: Mapping, options: ReleaseOptions) -> list[str]:
    repo = options.repo_id or "path/or/repo-id"
    trl_splits = list(facts["rows"].get("trl", {})) or [options.train_split]
    train = options.train_split if options.train_split in trl_splits else trl_splits[0]
    return [
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'pairs = load_dataset("{repo}")          # prompt, chosen, rejected, messages, scores',
        f'trl_pairs = load_dataset("{repo}", "trl")  # prompt/chosen/rejected as TRL takes them',
        f'responses = load_dataset("{repo}", "completions")  # every response, to binarise anew',
        "",
        "from trl import DPOConfig, DPOTrainer",
        "",
        "trainer = DPOTrainer(",
        '    model="your/sft-model",',
        '    args=DPOConfig(output_dir="dpo-out"),',
        f'    train_dataset=trl_pairs["{train}"],',
        ")",
        "trainer.train()",
        "```",
    ]


def _citation(facts: Mapping) -> list[str]:
    paper = METHOD_PAPER
    out = [
        "",
        "## Citation",
        "",
        f"The method is ActiveUltraFeedback (Melikidze et al., arXiv {paper['arxiv']}, "
        f"{paper['venue_short']} {paper['year']}):",
        "",
        "```bibtex",
        f"@inproceedings{{melikidze{paper['year']}activeultrafeedback,",
        f"  title         = {{{paper['title']}}},",
        "  author        = {Melikidze and others},",
        f"  booktitle     = {{{paper['venue']}}},",
        f"  year          = {{{paper['year']}}},",
        f"  eprint        = {{{paper['arxiv']}}},",
        "  archivePrefix = {arXiv},",
        "}",
        "```",
    ]
    used = {str(m["method"]) for m in facts["methods"]}
    cited = sorted({SELECTION_PAPERS[m] for m in used if m in SELECTION_PAPERS})
    for name, arxiv in cited:
        out += ["", f"Pairs selected with {name}: arXiv {arxiv}."]
    return out


def _provenance(software: str, options: ReleaseOptions) -> list[str]:
    out = [
        "",
        "## Provenance",
        "",
        f"Built by {software}. `manifest.json` lists the rounds, the rows per split and the "
        "sha256 of every file.",
    ]
    if not options.license:
        out += ["", "No license was chosen for this dataset."]
    return out
