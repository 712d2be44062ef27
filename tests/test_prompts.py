"""Prompt ingestion: formats, ids, duplicates/empties, and the error messages users see."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest

from auf_assets.core.principles import SOURCE_PRINCIPLE_WEIGHTS, principle_weights
from auf_assets.core.prompts import (
    DEMO_PROMPTS_PATH,
    MAX_PROMPT_CHARS,
    PromptBatch,
    PromptInputError,
    demo_prompts,
    load_prompts,
    prompts_from_frame,
    stable_prompt_id,
)
from auf_assets.core.truncation import head_and_tail, keep_head_and_tail

ROWS = [
    {"prompt_id": "a", "prompt": "What is 2 + 2?", "source": "math"},
    {"prompt_id": "b", "prompt": "Write a haiku about snow.", "source": "creative"},
    {"prompt_id": "c", "prompt": "Name a prime number above 10.", "source": "math"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_expected(batch: PromptBatch) -> None:
    assert batch.prompts.columns == ["prompt_id", "prompt", "source"]
    assert batch.prompts["prompt_id"].to_list() == ["a", "b", "c"]
    assert batch.prompts["prompt"].to_list() == [r["prompt"] for r in ROWS]
    assert batch.prompts["source"].to_list() == ["math", "creative", "math"]
    assert batch.duplicates == [] and batch.empty == []


# ---------------------------------------------------------------------------------------------
# formats


def test_jsonl_and_ndjson(tmp_path):
    assert_expected(load_prompts(write_jsonl(tmp_path / "p.jsonl", ROWS)))
    assert_expected(load_prompts(write_jsonl(tmp_path / "p.ndjson", ROWS)))


def test_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert_expected(load_prompts(path))


def test_csv(tmp_path):
    path = tmp_path / "p.csv"
    pl.DataFrame(ROWS).write_csv(path)
    assert_expected(load_prompts(path))


def test_csv_numeric_ids_stay_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt_id,prompt\n7,"Hello, there"\n8,Bye\n', encoding="utf-8")
    batch = load_prompts(path)
    assert batch.prompts["prompt_id"].to_list() == ["7", "8"]
    assert batch.prompts["prompt"].to_list() == ["Hello, there", "Bye"]


def test_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame(ROWS).write_parquet(path)
    assert_expected(load_prompts(path))


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "single"))
    assert_expected(load_prompts(tmp_path / "single"))

    other = datasets.Dataset.from_list([{"prompt": "Held-out question?"}])
    dd = datasets.DatasetDict({"train": ds, "test": other})
    dd.save_to_disk(str(tmp_path / "dd"))
    batch = load_prompts(tmp_path / "dd")
    assert_expected(batch)
    assert "split=train" in batch.origin

    test = load_prompts(tmp_path / "dd", split="test")
    assert test.prompts["prompt"].to_list() == ["Held-out question?"]
    assert test.prompts["source"].to_list() == ["dd"]  # the directory's name

    with pytest.raises(PromptInputError, match=r"no split 'dev'.*train, test"):
        load_prompts(tmp_path / "dd", split="dev")

    datasets.DatasetDict({"a": other, "b": other}).save_to_disk(str(tmp_path / "notrain"))
    with pytest.raises(PromptInputError, match=r"no 'train' split.*a, b"):
        load_prompts(tmp_path / "notrain")


def test_prompts_from_frame_and_custom_columns():
    df = pl.DataFrame({"question": ["Why?", "How?"], "cat": ["factual", None]})
    batch = prompts_from_frame(
        df, origin="memory", prompt_column="question", source_column="cat", default_source="x"
    )
    assert batch.prompts["prompt"].to_list() == ["Why?", "How?"]
    assert batch.prompts["source"].to_list() == ["factual", "x"]
    assert batch.prompts["prompt_id"].to_list() == [
        stable_prompt_id("Why?"),
        stable_prompt_id("How?"),
    ]


def test_missing_source_uses_default_or_stem(tmp_path):
    path = write_jsonl(tmp_path / "my_pool.jsonl", [{"prompt": "Hi"}])
    assert load_prompts(path).prompts["source"].to_list() == ["my_pool"]
    assert load_prompts(path, default_source="general").prompts["source"].to_list() == ["general"]


def test_limit_keeps_first_valid(tmp_path):
    rows = [
        {"prompt": "one"},
        {"prompt": "  "},
        {"prompt": "one"},
        {"prompt": "two"},
        {"prompt": "3"},
    ]
    batch = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows), limit=2)
    assert batch.prompts["prompt"].to_list() == ["one", "two"]
    with pytest.raises(ValueError):
        load_prompts(tmp_path / "p.jsonl", limit=0)


# ---------------------------------------------------------------------------------------------
# layout recognition (prompt_column=None)

H4_ROWS = [  # HuggingFaceH4/ultrafeedback_binarized: prompt, prompt_id, chosen, rejected, messages
    {
        "prompt": "What is 2 + 2?",
        "prompt_id": "h1",
        "chosen": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
        ],
        "rejected": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "5"},
        ],
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
        ],
        "score_chosen": 9.0,
    },
    {
        "prompt": "Name a colour.",
        "prompt_id": "h2",
        "chosen": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue"},
        ],
        "rejected": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Seven"},
        ],
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue"},
        ],
        "score_chosen": 8.0,
    },
]

CHAT_ROWS = [  # a system turn first: the prompt is the first *user* turn
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Spain?"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi."},
        ]
    },
]


def test_layout_prompt_column_h4(tmp_path):
    path = tmp_path / "h4.parquet"
    pl.DataFrame(H4_ROWS).write_parquet(path)
    batch = load_prompts(path)
    assert batch.prompts["prompt"].to_list() == ["What is 2 + 2?", "Name a colour."]
    assert batch.prompts["prompt_id"].to_list() == ["h1", "h2"]
    assert batch.prompts["source"].to_list() == ["h4", "h4"]  # no source column: the stem


def test_layout_instruction_ultrafeedback(tmp_path):
    rows = [  # openbmb/UltraFeedback: source, instruction, models, completions
        {
            "source": "evol_instruct",
            "instruction": "Explain recursion.",
            "models": ["a", "b"],
            "completions": [{"model": "a", "response": "..."}],
        },
        {
            "source": "flan_v2_niv2",
            "instruction": "Translate 'cat' to French.",
            "models": ["b"],
            "completions": [{"model": "b", "response": "chat"}],
        },
    ]
    batch = load_prompts(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert batch.prompts["prompt"].to_list() == ["Explain recursion.", "Translate 'cat' to French."]
    assert batch.prompts["source"].to_list() == ["evol_instruct", "flan_v2_niv2"]
    assert batch.prompts["prompt_id"].to_list() == [
        stable_prompt_id("Explain recursion."),
        stable_prompt_id("Translate 'cat' to French."),
    ]


def test_layout_instruction_alpaca_eval_uses_dataset_as_source(tmp_path):
    path = tmp_path / "alpaca_eval.csv"  # AlpacaEval: instruction, output, generator, dataset
    pl.DataFrame(
        {
            "instruction": ["Write a limerick.", "What is DNA?"],
            "output": ["There once...", "A molecule."],
            "generator": ["gpt4", "gpt4"],
            "dataset": ["helpful_base", "koala"],
        }
    ).write_csv(path)
    batch = load_prompts(path)
    assert batch.prompts["prompt"].to_list() == ["Write a limerick.", "What is DNA?"]
    assert batch.prompts["source"].to_list() == ["helpful_base", "koala"]
    # a real source column still wins over 'dataset'
    df = pl.DataFrame({"instruction": ["x"], "dataset": ["koala"], "source": ["mine"]})
    assert prompts_from_frame(df, origin="m").prompts["source"].to_list() == ["mine"]
    # and a source_column named by the caller turns the fallback off
    df = pl.DataFrame({"instruction": ["x"], "dataset": ["koala"]})
    batch = prompts_from_frame(df, origin="m", source_column="cat", default_source="d")
    assert batch.prompts["source"].to_list() == ["d"]


def test_layout_messages_first_user_turn(tmp_path):
    expected = ["Capital of France?", "Say hi."]
    assert (
        load_prompts(write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)).prompts["prompt"].to_list()
        == expected
    )
    path = tmp_path / "chat.parquet"  # a list-of-struct column once it went through Arrow
    pl.DataFrame(CHAT_ROWS).write_parquet(path)
    batch = load_prompts(path)
    assert batch.prompts["prompt"].to_list() == expected
    assert batch.prompts["prompt_id"].to_list() == [stable_prompt_id(p) for p in expected]


def test_layout_sharegpt_conversations_and_h4_chosen():
    df = pl.DataFrame(
        {
            "conversations": [
                [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hello?"}],
                [{"from": "human", "value": "Why is the sky blue?"}, {"from": "gpt", "value": "."}],
            ]
        }
    )
    batch = prompts_from_frame(df, origin="sharegpt")
    assert batch.prompts["prompt"].to_list() == ["Hello?", "Why is the sky blue?"]
    chosen_only = pl.DataFrame([{k: r[k] for k in ("chosen", "rejected")} for r in H4_ROWS])
    batch = prompts_from_frame(chosen_only, origin="prefs")
    assert batch.prompts["prompt"].to_list() == ["What is 2 + 2?", "Name a colour."]


def test_layout_order_prompt_before_instruction_before_messages():
    df = pl.DataFrame(
        {
            "messages": [[{"role": "user", "content": "from messages"}]],
            "instruction": ["from instruction"],
            "prompt": ["from prompt"],
        }
    )
    assert prompts_from_frame(df, origin="m").prompts["prompt"].to_list() == ["from prompt"]
    df = df.drop("prompt")
    assert prompts_from_frame(df, origin="m").prompts["prompt"].to_list() == ["from instruction"]
    df = df.drop("instruction")
    assert prompts_from_frame(df, origin="m").prompts["prompt"].to_list() == ["from messages"]


def test_layout_prompt_column_holding_chat():
    # TRL's conversational layout: 'prompt' is itself a list of messages
    df = pl.DataFrame(
        {
            "prompt": [
                [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q1"}],
                [{"role": "user", "content": "Q2"}],
            ]
        }
    )
    assert prompts_from_frame(df, origin="trl").prompts["prompt"].to_list() == ["Q1", "Q2"]


def test_explicit_prompt_column_is_used_as_is(tmp_path):
    rows = [{"prompt": "ignored", "question": "asked", "messages": CHAT_ROWS[0]["messages"]}]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    assert load_prompts(path).prompts["prompt"].to_list() == ["ignored"]
    assert load_prompts(path, prompt_column="question").prompts["prompt"].to_list() == ["asked"]
    by_chat = load_prompts(path, prompt_column="messages")
    assert by_chat.prompts["prompt"].to_list() == ["Capital of France?"]
    # an explicit column is not replaced by a recognised one when it is missing
    raises(path, "many.jsonl", "no prompt column 'instruction'", prompt_column="instruction")


def test_error_no_layout_names_columns_and_layouts_tried():
    df = pl.DataFrame({"text": ["a"], "chosen": ["Human: hi Assistant: hello"]})
    with pytest.raises(PromptInputError) as info:
        prompts_from_frame(df, origin="hh")
    message = str(info.value)
    for part in (
        "hh: ",
        "no prompt column found",
        "'text', 'chosen'",
        "'prompt'",
        "'instruction'",
        "'messages'",
        "'conversations'",
        "first user turn",
        "'chosen' is there but not chat messages",
        "prompt_column",
    ):
        assert part in message, f"{part!r} not in {message!r}"


def test_error_chat_without_user_turn_names_the_row(tmp_path):
    rows = [
        CHAT_ROWS[1],
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
    ]
    path = write_jsonl(tmp_path / "nouser.jsonl", rows)
    err = raises(path, "nouser.jsonl", "line 2", "no user turn", "'messages'", "system, assistant")
    assert err.row == 2


def test_error_chat_row_that_is_not_a_chat(tmp_path):
    rows = [CHAT_ROWS[1], {"messages": "just text"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    raises(path, "mixed.jsonl", "line 2", "list of chat messages", "str")
    rows = [CHAT_ROWS[1], {"messages": [{"role": "user", "content": ["part"]}]}]
    path = write_jsonl(tmp_path / "parts.jsonl", rows)
    raises(path, "parts.jsonl", "line 2", "first user turn", "must be text", "list")


def test_layout_on_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(CHAT_ROWS).save_to_disk(str(tmp_path / "chat_ds"))
    batch = load_prompts(tmp_path / "chat_ds")
    assert batch.prompts["prompt"].to_list() == ["Capital of France?", "Say hi."]
    assert batch.prompts["source"].to_list() == ["chat_ds", "chat_ds"]


# ---------------------------------------------------------------------------------------------
# ids, duplicates and empties


def test_stable_id_is_deterministic_and_whitespace_insensitive():
    pid = stable_prompt_id("What is  the\ncapital of France? ")
    assert pid == stable_prompt_id(" What is the capital of\tFrance?")
    assert pid.startswith("p-") and len(pid) == 18
    int(pid[2:], 16)
    assert pid != stable_prompt_id("What is the capital of Spain?")
    # a fixed value, so ids do not drift between releases
    assert stable_prompt_id("hello world") == "p-b94d27b9934d3e08"


def test_duplicates_and_empties_are_reported_with_rows(tmp_path):
    lines = [
        {"prompt": "Tell me a joke."},  # line 1
        {"prompt": "   "},  # line 2: empty
        {"prompt": "Tell  me a joke.\n"},  # line 3: same normalised text as line 1
        {"prompt": "Another prompt"},  # line 4
        {"prompt": ""},  # line 5: empty
    ]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    batch = load_prompts(path)
    assert batch.prompts["prompt"].to_list() == ["Tell me a joke.", "Another prompt"]
    assert batch.empty == [{"row": 2}, {"row": 5}]
    assert batch.duplicates == [
        {"row": 3, "prompt_id": stable_prompt_id("Tell me a joke."), "duplicate_of_row": 1}
    ]
    assert batch.summary() == f"2 prompts from {path} (1 duplicate, 2 empty dropped)"


def test_prompts_over_the_maximum_length_are_dropped_and_named(tmp_path):
    pasted = "Summarise this document. " + "x" * (MAX_PROMPT_CHARS + 1)
    lines = [
        {"prompt_id": "short", "prompt": "What is 2 + 2?"},
        {"prompt_id": "pasted", "prompt": pasted},  # row 2
        {"prompt": "y" * 40},  # row 3: its id is derived from the text
        {"prompt_id": "fits", "prompt": "z" * 30},
    ]
    path = write_jsonl(tmp_path / "long.jsonl", lines)
    batch = load_prompts(path)
    assert batch.prompts["prompt_id"].to_list() == ["short", stable_prompt_id("y" * 40), "fits"]
    assert batch.too_long == [{"row": 2, "prompt_id": "pasted", "chars": len(pasted)}]
    assert f"1 over {MAX_PROMPT_CHARS:,} characters dropped" in batch.summary()
    report = batch.too_long_report()
    assert report.startswith(f"1 prompt longer than {MAX_PROMPT_CHARS:,} characters dropped")
    assert "pasted" in report and f"{len(pasted):,}" in report and "max_prompt_chars" in report
    # A lower maximum (the setting), a limit counting only kept prompts, and no maximum at all.
    lower = load_prompts(path, max_prompt_chars=35, limit=2)
    assert lower.prompts["prompt_id"].to_list() == ["short", "fits"]
    assert [e["prompt_id"] for e in lower.too_long] == ["pasted", stable_prompt_id("y" * 40)]
    assert "and 1 more" in lower.too_long_report(shown=1)
    assert len(load_prompts(path, max_prompt_chars=None).too_long) == 0
    raises(
        write_jsonl(tmp_path / "all.jsonl", [{"prompt": pasted}]),
        "all.jsonl",
        "no usable prompts",
        f"1 over max_prompt_chars={MAX_PROMPT_CHARS:,}",
    )
    with pytest.raises(ValueError, match="max_prompt_chars must be a positive integer"):
        load_prompts(path, max_prompt_chars=0)


def test_prompt_pool_reports_what_it_dropped_for_length(tmp_path, auf_home):
    import dagster as dg

    from auf_assets.prompts import prompt_pool
    from resources.store import DuckDBStore

    rows = [{"prompt_id": f"long-{i}", "prompt": "w" * 200} for i in range(12)]
    path = write_jsonl(tmp_path / "p.jsonl", [*ROWS, *rows])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [prompt_pool],
        instance=instance,
        resources={"store": DuckDBStore()},
        run_config={
            "ops": {"prompt_pool": {"config": {"path": str(path), "max_prompt_chars": 100}}}
        },
    )
    meta = result.asset_materializations_for_node("prompt_pool")[0].metadata
    assert meta["dagster/row_count"].value == 3 and meta["too_long_dropped"].value == 12
    assert meta["too_long_ids"].value == [f"long-{i}" for i in range(12)]
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level == logging.WARNING and "prompt_pool" in (e.step_key or "")
    ]
    assert any(
        "12 prompts longer than 100 characters dropped" in w
        and "long-0, long-1" in w
        and "and 2 more" in w
        for w in warnings
    ), warnings


def test_head_and_tail_keep_both_ends():
    assert head_and_tail(10, 20) == (10, 0)
    assert head_and_tail(1000, 100) == (75, 25)
    text = "INSTRUCTION " + "m" * 100 + " QUESTION?"
    cut = keep_head_and_tail(text, 40, "[{n} cut]")
    assert cut.startswith("INSTRUCTION ") and cut.endswith(" QUESTION?")
    assert f"[{len(text) - 40} cut]" in cut and keep_head_and_tail("short", 40, "[{n}]") == "short"


def test_same_id_same_text_is_a_duplicate_and_different_ids_same_text_too(tmp_path):
    rows = [
        {"prompt_id": 1, "prompt": "x y"},
        {"prompt_id": 1, "prompt": "x  y"},
        {"prompt_id": 2, "prompt": "x y"},
        {"prompt_id": 3, "prompt": "z"},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    batch = load_prompts(path)
    assert batch.prompts["prompt_id"].to_list() == ["1", "3"]
    assert batch.duplicates == [
        {"row": 2, "prompt_id": "1", "duplicate_of_row": 1},
        {"row": 3, "prompt_id": "2", "duplicate_of_row": 1},
    ]


def test_jsonl_rows_are_line_numbers(tmp_path):
    path = tmp_path / "gap.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": " "}\n', encoding="utf-8")
    assert load_prompts(path).empty == [{"row": 3}]


# ---------------------------------------------------------------------------------------------
# errors: file name, row and problem in the message


def raises(path, *parts, **kwargs):
    with pytest.raises(PromptInputError) as info:
        load_prompts(path, **kwargs)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


def test_error_bad_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n', encoding="utf-8")
    err = raises(path, "broken.jsonl", "line 3", "bad JSON")
    assert err.row == 3


def test_error_bad_json_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]', encoding="utf-8")
    raises(path, "broken.json", "line 3", "bad JSON")


def test_error_number_as_prompt(tmp_path):
    path = tmp_path / "typed.json"
    path.write_text(json.dumps([{"prompt": "ok"}, {"prompt": 42}]), encoding="utf-8")
    raises(path, "typed.json", "row 2", "must be text", "number")


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "list"), ({"a": 1}, "object"), (None, "null"), (True, "boolean")]
)
def test_error_non_text_prompt(tmp_path, value, kind):
    path = write_jsonl(
        tmp_path / "typed.jsonl", [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": value}]
    )
    raises(path, "typed.jsonl", "line 3", kind)


def test_error_non_text_prompt_in_parquet(tmp_path):
    path = tmp_path / "ints.parquet"
    pl.DataFrame({"prompt": [5, 6]}).write_parquet(path)
    raises(path, "ints.parquet", "row 1", "number")


def test_error_missing_column_lists_found_columns(tmp_path):
    # an 'instruction' column is now a recognised layout, so the named-column error needs the
    # column named explicitly; the automatic layouts are checked on the CSV below
    path = write_jsonl(tmp_path / "cols.jsonl", [{"instruction": "hi", "category": "x"}])
    raises(
        path,
        "cols.jsonl",
        "no prompt column 'prompt'",
        "'instruction'",
        "'category'",
        "prompt_column",
        prompt_column="prompt",
    )
    csv = tmp_path / "cols.csv"
    csv.write_text("question,id\nhi,1\n", encoding="utf-8")
    raises(csv, "cols.csv", "'question'", "'id'", "prompt_column")


def test_error_missing_field_in_one_row(tmp_path):
    path = write_jsonl(tmp_path / "ragged.jsonl", [{"prompt": "a"}, {"text": "b"}])
    raises(path, "ragged.jsonl", "line 2", "no 'prompt' field")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.parquet"])
def test_error_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n" if name.endswith("jsonl") else "", encoding="utf-8")
    raises(path, name, "empty")


def test_error_zero_rows(tmp_path):
    csv = tmp_path / "header_only.csv"
    csv.write_text("prompt_id,prompt\n", encoding="utf-8")
    raises(csv, "header_only.csv", "no rows")
    js = tmp_path / "nothing.json"
    js.write_text("[]", encoding="utf-8")
    raises(js, "nothing.json", "no rows")
    pq = tmp_path / "nothing.parquet"
    pl.DataFrame({"prompt": []}, schema={"prompt": pl.String}).write_parquet(pq)
    raises(pq, "nothing.parquet", "no rows")


def test_error_everything_dropped(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": ""}, {"prompt": "  \n"}])
    raises(path, "blank.jsonl", "no usable prompts", "2 empty")


def test_error_nonexistent_file(tmp_path):
    raises(tmp_path / "nope.jsonl", "nope.jsonl", "not found")


def test_error_corrupt_parquet_and_unknown_suffix(tmp_path):
    pq = tmp_path / "bad.parquet"
    pq.write_bytes(b"this is not parquet at all")
    raises(pq, "bad.parquet", "cannot read as Parquet")
    txt = tmp_path / "prompts.txt"
    txt.write_text("hello\n", encoding="utf-8")
    raises(txt, "prompts.txt", "unsupported file type", ".jsonl")
    (tmp_path / "plain_dir").mkdir()
    raises(tmp_path / "plain_dir", "plain_dir", "not a dataset")


def test_error_conflicting_ids_names_both_rows(tmp_path):
    rows = [
        {"prompt_id": "q1", "prompt": "a"},
        {"prompt_id": "q2", "prompt": "b"},
        {"prompt_id": "q1", "prompt": "c"},
    ]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    raises(path, "ids.jsonl", "'q1'", "two different prompts", "lines 1 and 3")


@pytest.mark.parametrize("bad_id", [1.5, ["x"], {"k": 1}, True, ""])
def test_error_bad_id_type(tmp_path, bad_id):
    path = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"prompt_id": "ok", "prompt": "a"}, {"prompt_id": bad_id, "prompt": "b"}],
    )
    raises(path, "ids.jsonl", "line 2", "prompt_id")


def test_error_split_on_a_plain_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    raises(path, "p.jsonl", "split", "DatasetDict", split="train")


def test_error_bad_jsonl_record_kind(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text('{"prompt": "a"}\n["b"]\n', encoding="utf-8")
    raises(path, "arr.jsonl", "line 2", "JSON object")


# ---------------------------------------------------------------------------------------------
# the demo set


def test_demo_prompts():
    batch = demo_prompts()
    df = batch.prompts
    assert df.height >= 40
    assert df["prompt_id"].n_unique() == df.height
    assert len({stable_prompt_id(p) for p in df["prompt"]}) == df.height
    assert batch.duplicates == [] and batch.empty == []
    assert all(len(p) <= 200 for p in df["prompt"])
    sources = set(df["source"])
    assert len(sources) >= 4
    for source in sources:
        assert source in SOURCE_PRINCIPLE_WEIGHTS
        assert principle_weights(source) is SOURCE_PRINCIPLE_WEIGHTS[source]
    assert DEMO_PROMPTS_PATH.name in batch.summary()
