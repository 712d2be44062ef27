"""Formatting, parsing, validation and resolution of human labels (no Dagster, no store), and
reading label files safely: streamed, bounded, never quoting the file."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta

import pytest

from auf_assets.core.label_files import (
    HashingReader,
    normalise_choice,
    parse_label_bytes,
    parse_label_stream,
)
from auf_assets.core.labels import (
    PairInfo,
    Vote,
    atomic_write_text,
    balanced_swaps,
    batch_records,
    label_id,
    map_choice,
    resolve_votes,
    to_csv,
    to_jsonl,
    to_labelstudio,
    validate_labels,
)

T0 = datetime(2026, 1, 1, 12, 0)


def pair_rows(n=4, round_id="round-0001"):
    ids = [f"pr-{i}" for i in range(n)]
    swaps = balanced_swaps(ids, seed=7)
    return [
        {
            "pair_id": pid,
            "round_id": round_id,
            "prompt_id": f"p{i}",
            "prompt": f"question {i}?",
            "response_a": f"answer a{i}",
            "response_b": f"answer b{i}, with a comma\nand a newline",
            "swapped": swaps[pid],
        }
        for i, pid in enumerate(ids)
    ]


def infos(rows, sent=True):
    return {
        r["pair_id"]: PairInfo(
            r["pair_id"],
            r["round_id"],
            f"c-a{r['pair_id']}",
            f"c-b{r['pair_id']}",
            (f"c-b{r['pair_id']}" if r["swapped"] else f"c-a{r['pair_id']}") if sent else None,
        )
        for r in rows
    }


def test_balanced_swaps_are_half_deterministic_and_order_free():
    ids = [f"pr-{i}" for i in range(11)]
    swaps = balanced_swaps(ids, seed=3)
    assert sum(swaps.values()) == 5
    assert balanced_swaps(list(reversed(ids)), seed=3) == swaps
    assert any(balanced_swaps(ids, seed=s) != swaps for s in range(4, 10))


def test_batch_files_round_trip_as_label_files():
    rows = pair_rows()
    records = batch_records(rows)
    for rec, row in zip(records, rows, strict=True):
        shown_a = row["response_b"] if row["swapped"] else row["response_a"]
        assert rec["response_A"] == shown_a

    # jsonl: fill the choice in and read it back
    filled = [{**r, "choice": "A", "annotator": "ann"} for r in records]
    parsed = parse_label_bytes(to_jsonl(filled).encode(), "round-0001.jsonl")
    assert not parsed.problems and [x.choice for x in parsed.labels] == ["A"] * 4
    assert [x.line for x in parsed.labels] == [1, 2, 3, 4]

    # csv keeps newlines and commas inside fields; lines count where a record starts
    text = to_csv(filled)
    back = list(csv.DictReader(io.StringIO(text)))
    assert back[0]["response_B"] == records[0]["response_B"]
    parsed = parse_label_bytes(text.encode(), "round-0001.csv")
    assert not parsed.problems
    assert [x.line for x in parsed.labels] == [2, 4, 6, 8]

    # an outbox file dropped back untouched: every record has no choice yet
    parsed = parse_label_bytes(to_jsonl(records).encode(), "x.jsonl")
    assert parsed.labels == [] and parsed.skipped == [1, 2, 3, 4] and not parsed.problems

    tasks = json.loads(to_labelstudio(records))
    assert set(tasks[0]["data"]) == {
        "pair_id",
        "round_id",
        "prompt_id",
        "prompt",
        "response_A",
        "response_B",
    }


def test_label_studio_export_is_read_with_annotators_and_comments():
    export = [
        {
            "id": 11,
            "data": {"pair_id": "pr-0", "round_id": "round-0001"},
            "annotations": [
                {
                    "completed_by": {"id": 3, "email": "ann@example.org"},
                    "result": [
                        {"from_name": "choice", "type": "choices", "value": {"choices": ["B"]}},
                        {"from_name": "comment", "type": "textarea", "value": {"text": ["ok"]}},
                    ],
                    "updated_at": "2026-01-02T10:00:00.5Z",
                },
                {"completed_by": 4, "was_cancelled": True, "result": []},
                {"completed_by": 5, "result": [{"type": "choices", "value": {"choices": ["Tie"]}}]},
            ],
        },
        {"id": 12, "data": {"pair_id": "pr-1"}, "annotations": []},
    ]
    parsed = parse_label_bytes(json.dumps(export).encode(), "export.json")
    assert parsed.format == "labelstudio" and not parsed.problems
    first, second = parsed.labels
    assert (first.choice, first.annotator, first.comment) == ("B", "ann@example.org", "ok")
    assert first.labelled_at == datetime(2026, 1, 2, 10, 0, 0, 500000)
    assert (second.choice, second.annotator, second.location) == (
        "tie",
        "5",
        "item 1, annotation 3",
    )
    assert parsed.skipped == [2]

    # Label Studio's JSON-MIN export: flat records
    flat = [{"pair_id": "pr-0", "choice": "a", "annotator": 7}]
    parsed = parse_label_bytes(json.dumps(flat).encode(), "min.json")
    assert parsed.labels[0].choice == "A" and parsed.labels[0].annotator == "7"


@pytest.mark.parametrize(
    ("name", "data", "where", "message"),
    [
        (
            "x.jsonl",
            b'{"pair_id": "pr-0", "choice": "A"}\n{"pair_id": "pr-1", "ch',
            2,
            "not valid JSON",
        ),
        ("x.jsonl", b'{"choice": "A"}\n', 1, "no pair_id"),
        ("x.jsonl", b'{"pair_id": "pr-0", "choice": "C"}\n', 1, "choice must be A, B or tie"),
        ("x.jsonl", b'["pr-0", "A"]\n', 1, "must be a JSON object"),
        ("x.jsonl", b'{"pair_id": "pr-0", "choice": "A", "labelled_at": "noon"}', 1, "ISO 8601"),
        ("x.csv", b"pair_id,label\npr-0,A\n", 1, "no header with a choice column"),
        ("x.csv", b'pair_id,choice\npr-0,A\npr-1,"B\n', 3, "not valid CSV"),
        ("x.csv", b"pair_id,choice\npr-0,A,extra\n", 2, "3 fields where the header has 2"),
        ("x.csv", "pair_id,choice\npr-0,é\n".encode("latin-1"), 2, "not UTF-8"),
        ("x.json", b'{"a": [1, 2}', 1, "not valid JSON"),
        ("x.json", b"", None, "empty"),
        ("x.txt", b"pair_id,choice\n", None, "unsupported file type .txt"),
    ],
)
def test_malformed_files_name_the_line_and_the_problem(name, data, where, message):
    parsed = parse_label_bytes(data, name)
    assert parsed.problems, parsed
    assert parsed.problems[0].line == where
    assert message in parsed.problems[0].message


def test_csv_with_semicolons_and_a_byte_order_mark_is_read():
    data = "\ufeffpair_id;choice;annotator\npr-0;b;ann\n".encode()
    parsed = parse_label_bytes(data, "excel.csv")
    assert not parsed.problems
    assert (parsed.labels[0].pair_id, parsed.labels[0].choice) == ("pr-0", "B")


def test_validation_against_the_stored_pairs():
    rows = pair_rows()
    known = infos(rows)
    lines = [
        {"pair_id": "pr-0", "choice": "A", "annotator": "x"},
        {"pair_id": "pr-9", "choice": "A"},  # unknown
        {"pair_id": "pr-1", "choice": "A", "round_id": "round-0002"},  # other round
        {"pair_id": "pr-0", "choice": "A", "annotator": "x"},  # identical repeat: kept once
        {"pair_id": "pr-2", "choice": "A"},
        {"pair_id": "pr-2", "choice": "B"},  # conflicting duplicate (same unnamed annotator)
        {"pair_id": "pr-3", "choice": "A", "annotator": "x"},
        {"pair_id": "pr-3", "choice": "B", "annotator": "y"},  # another annotator: fine
    ]
    parsed = parse_label_bytes(to_jsonl(lines).encode(), "f.jsonl")
    check = validate_labels(parsed, known, file_name="f.jsonl")
    assert check.repeats == [4] and not check.truncated
    assert {p.line: p.message.split(" ")[0] for p in check.problems} == {
        2: "unknown",
        3: "pair",
        6: "conflicting",
    }
    assert "belongs to round-0001, not to the round_id the line gives" in check.problems[1].message
    assert [k.line for k in check.kept] == [1, 5, 7, 8]

    check = validate_labels(
        parse_label_bytes(b'{"pair_id": "pr-0", "choice": "A"}', "g.jsonl"),
        known,
        file_name="g.jsonl",
        expected_round="round-0002",
    )
    assert "not to round-0002" in check.problems[0].message

    check = validate_labels(
        parse_label_bytes(b'{"pair_id": "pr-0", "choice": "A"}', "g.jsonl"),
        infos(rows, sent=False),
        file_name="g.jsonl",
    )
    assert "never sent out" in check.problems[0].message


def test_presented_choices_map_back_to_the_pair():
    assert map_choice("A", swapped=False) == "a"
    assert map_choice("A", swapped=True) == "b"
    assert map_choice("B", swapped=True) == "a"
    assert map_choice("tie", swapped=True) == "tie"
    with pytest.raises(ValueError):
        map_choice("C", swapped=False)
    assert normalise_choice(" TIE ") == "tie" and normalise_choice("") is None


def test_label_ids_are_deterministic():
    a = label_id("pr-0", "annotator:x", "sha", "line 3")
    assert a == label_id("pr-0", "annotator:x", "sha", "line 3")
    assert a != label_id("pr-0", "annotator:x", "sha2", "line 3")


def vote(voter, choice, minutes=0, order=0):
    return Vote(voter, choice, T0 + timedelta(minutes=minutes), order)


def test_resolution_majority_of_decisive_votes_and_ties_on_a_split():
    assert resolve_votes([]).preference == "unlabelled"
    assert resolve_votes([vote("x", "a")]).preference == "a"
    assert resolve_votes([vote("x", "a"), vote("y", "b")]).preference == "tie"
    two_one = [vote("x", "a"), vote("y", "a"), vote("z", "b")]
    assert resolve_votes(two_one).preference == "a"
    # tie votes do not dilute a decisive majority
    res = resolve_votes([vote("x", "b"), vote("y", "tie"), vote("z", "tie")])
    assert res.preference == "b" and res.counts == {"a": 0, "b": 1, "tie": 2}
    assert resolve_votes([vote("x", "tie")]).preference == "tie"


def test_resolution_counts_one_vote_per_voter_the_latest():
    corrected = [vote("x", "a", minutes=0), vote("y", "b"), vote("x", "b", minutes=5)]
    res = resolve_votes(corrected)
    assert res.preference == "b" and res.n_labels == 3 and res.counts["b"] == 2
    # same time: the later import/line wins
    assert resolve_votes([vote("x", "a", order=1), vote("x", "b", order=0)]).preference == "a"


def test_unanimous_rule():
    assert resolve_votes([vote("x", "a"), vote("y", "a")], "unanimous").preference == "a"
    two_one = [vote("x", "a"), vote("y", "a"), vote("z", "b")]
    assert resolve_votes(two_one, "unanimous").preference == "tie"
    with pytest.raises(ValueError, match="resolution rule"):
        resolve_votes([], "loudest")  # type: ignore[arg-type]


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out" / "round-0001.jsonl"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["round-0001.jsonl"]


def test_jsonl_lines_may_hold_unicode_line_separators():
    text = to_jsonl([{"pair_id": "pr-0", "choice": "A", "comment": "one\u2028two\x85three\rfour"}])
    parsed = parse_label_bytes(text.encode(), "x.jsonl")
    assert not parsed.problems and parsed.labels[0].comment == "one\u2028two\x85three\rfour"


# -- reading label files safely -----------------------------------------------------------------

SECRET = "root:*:20228:0:99999:7:::"

# Each file is wrong in one place, and that place holds SECRET: no message may repeat it.
QUOTING_FILES = [
    ("shadow.csv", f"{SECRET}\ndaemon:*:20228:0:99999:7:::\n", 1, "no header with a pair_id"),
    ("x.csv", f"pair_id,choice,{SECRET}\npr-0,A,x\n", None, None),  # other columns: fine
    ("x.csv", f"{SECRET},{SECRET}\npr-0,A\n", 1, "no header"),
    ("x.csv", f"pair_id,choice,x,x\npr-0,A,{SECRET},y\n", 1, "names a column twice"),
    ("x.jsonl", json.dumps({"pair_id": "pr-0", "choice": SECRET}), 1, "choice must be A, B"),
    ("x.jsonl", json.dumps({"pair_id": "pr-0", "choice": [SECRET]}), 1, "choice must be A, B"),
    ("x.jsonl", json.dumps({"pair_id": [SECRET], "choice": "A"}), 1, "pair_id must be text"),
    ("x.jsonl", json.dumps({"pair_id": "pr-0", "choice": "A", "labelled_at": SECRET}), 1, "8601"),
    ("x.jsonl", f'{{"pair_id": "{SECRET}", "choice": "A"', 1, "not valid JSON"),
    ("x.json", f'[{{"pair_id": "{SECRET}"', 1, "not valid JSON"),
    ("x.csv", f'pair_id,choice\n"{SECRET}\n', 2, "not valid CSV"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), QUOTING_FILES)
def test_no_problem_quotes_the_file(name, text, line, message):
    parsed = parse_label_bytes(text.encode(), name)
    if message is None:
        assert not parsed.problems
        return
    assert parsed.problems and parsed.problems[0].line == line, parsed.problems
    assert message in parsed.problems[0].message
    for problem in parsed.problems:
        assert "root" not in str(problem) and "20228" not in str(problem), problem


def test_validation_does_not_quote_the_file():
    known = infos(pair_rows())
    lines = [
        {"pair_id": SECRET, "choice": "A"},  # unknown pair
        {"pair_id": "pr-1", "choice": "A", "round_id": SECRET},  # another round
        {"pair_id": "pr-2", "choice": "A", "annotator": SECRET},
        {"pair_id": "pr-2", "choice": "B", "annotator": SECRET},  # conflicting duplicate
    ]
    check = validate_labels(
        parse_label_bytes(to_jsonl(lines).encode(), "f.jsonl"), known, file_name="f.jsonl"
    )
    assert [p.line for p in check.problems] == [1, 2, 4]
    assert all("root" not in str(p) for p in check.problems), check.problems
    assert "pair pr-1 belongs to round-0001" in check.problems[1].message  # stored values: named


def test_a_file_that_is_not_utf8_names_the_line_not_the_bytes():
    data = b'{"pair_id": "pr-0", "choice": "A"}\n' * 3000 + b'{"pair_id": "pr-\xff\xfe"}\n'
    parsed = parse_label_bytes(data, "x.jsonl")
    assert [(p.line, "not UTF-8" in p.message) for p in parsed.problems] == [(3001, True)]
    assert "0xff" not in str(parsed.problems[0])


def test_checking_stops_after_max_problems_and_says_there_are_more():
    junk = b"".join(b"junk line %d that is not json\n" % i for i in range(50_000))
    parsed = parse_label_bytes(junk, "junk.jsonl", max_problems=20)
    assert len(parsed.problems) == 20 and parsed.truncated
    assert [p.line for p in parsed.problems] == list(range(1, 21))
    # Exactly max_problems problems: all listed, and no "more".
    parsed = parse_label_bytes(b"x\n" * 20, "few.jsonl", max_problems=20)
    assert len(parsed.problems) == 20 and not parsed.truncated
    # Validation shares the budget.
    lines = [{"pair_id": f"pr-x{i}", "choice": "A"} for i in range(30)]
    parsed = parse_label_bytes(to_jsonl(lines).encode(), "u.jsonl", max_problems=5)
    check = validate_labels(parsed, infos(pair_rows()), file_name="u.jsonl")
    assert len(check.problems) == 5 and check.truncated


def test_a_big_junk_file_is_read_as_a_stream(tmp_path):
    """Memory stays far below the file's size; the hash still covers every byte."""
    import hashlib
    import tracemalloc

    path = tmp_path / "junk.csv"
    line = b"pair_id,choice\n" + b"x" * 200 + b"\n"
    path.write_bytes(line * 40_000)  # 8.6 MB, every line after the first a problem
    tracemalloc.start()
    with path.open("rb", buffering=0) as handle:
        reader = HashingReader(handle)
        parsed = parse_label_stream(reader, path.name, max_problems=20)
        reader.drain()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(parsed.problems) == 20 and parsed.truncated
    assert peak < 2_000_000, peak
    assert reader.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert reader.bytes_read == path.stat().st_size


def test_reading_stops_at_the_limit_of_a_growing_file():
    reader = HashingReader(io.BytesIO(b"x" * 100_000), limit=10)
    reader.drain()
    assert reader.bytes_read == 10
