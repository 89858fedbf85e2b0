"""Loading and checking Alpaca data: the sample, bad files and rows, and the command line."""

import json
import re

import pytest

from helpers.data import DataError, FULL_DATA_ID, check_rows, in_test_split, load_alpaca, read_rows, summarize
from conftest import run_module


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                    encoding="utf-8")
    return path


def test_sample_has_the_promised_rows():
    general = read_rows("data/alpaca_zh_sample.json")
    identity = read_rows("data/identity_zh.json")
    test = load_alpaca("sample", split="test")
    assert len(general) >= 300 and len(identity) >= 50
    assert check_rows(general, "sample") == [] and check_rows(identity, "identity") == []
    with_input = sum(1 for r in general if r["input"])
    assert 0.2 * len(general) < with_input < 0.8 * len(general)  # with and without input
    assert all("知微" in r["output"] for r in identity)
    conversations = read_rows("data/conversations_zh.jsonl")
    assert len(conversations) >= 60 and check_rows(conversations, "conversations") == []
    train = load_alpaca("sample")
    assert len(train) == len(general) + len(identity) + len(conversations)
    assert set(train.column_names) == {"instruction", "input", "output", "messages", "tools"}
    # the held-out split shares no question with training, and tests the identity too, at later turns as well
    def questions(rows):
        return {r["instruction"] for r in rows if not r["messages"]} | {
            m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    assert not questions(train) & questions(test)
    assert sum("知微" in o for o in test["output"]) >= 15
    later = [m for r in test for i, m in enumerate(r["messages"]) if m["role"] == "assistant" and i > 2 and "知微" in m["content"]]
    assert len(later) >= 20  # identity asked at turn 2 or 3 of a held-out conversation


def test_corpus_for_pretraining_is_plain_text():
    lines = [l for l in open("data/corpus_zh.txt", encoding="utf-8").read().splitlines() if l.strip()]
    assert len(lines) >= 150
    assert not any("知微" in l or "<|" in l for l in lines)


@pytest.mark.parametrize("content,message", [
    ("[{\"instruction\": \"a\", \"output\": \"b\"", "is not valid JSON (line 1"),
    ({"instruction": "a"}, "holds a JSON dict, not a list of rows"),
])
def test_bad_files_say_what_and_how_to_fix(tmp_path, content, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_rows(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found: check the path"):
        load_alpaca(str(tmp_path / "nope.json"))


@pytest.mark.parametrize("row,message", [
    ({"instruction": "写一首诗", "input": ""}, "row 2: has no 'output' field"),
    ({"instruction": "  ", "input": "", "output": "x"}, "row 2: 'instruction' is empty"),
    ({"instruction": "加法", "input": 3, "output": "x"}, "row 2: 'input' is an int, not a string"),
    ("just text", "row 2: is a JSON str, not an object"),
])
def test_bad_rows_are_named_with_the_fix(tmp_path, row, message):
    good = {"instruction": "你好", "input": "", "output": "你好！"}
    path = write(tmp_path, "rows.json", [good, row, good])
    with pytest.raises(DataError, match=re.escape(message)):
        load_alpaca(str(path))


def test_dropping_bad_rows_says_how_many(tmp_path, capsys):
    good = {"instruction": "你好", "output": "你好！"}  # no input: Alpaca allows it
    path = write(tmp_path, "rows.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in
                                                 [good, {"instruction": "x"}, good, {"output": "y"}]))
    data = load_alpaca(str(path), split="all", drop_bad=True, identity=False)
    assert len(data) == 2 and data[0]["input"] == ""
    assert "dropped 2 of 4 rows" in capsys.readouterr().out


def test_split_is_stable_and_disjoint():
    rows = load_alpaca("sample", split="all").to_list()
    flags = [in_test_split(r, 0.1) for r in rows]
    assert flags == [in_test_split(r, 0.1) for r in reversed(rows)][::-1]  # order does not matter
    assert 0.03 < sum(flags) / len(flags) < 0.2


def test_split_of_a_local_file(tmp_path):
    rows = [{"instruction": f"问题{i}", "input": "", "output": f"答案{i}"} for i in range(400)]
    path = write(tmp_path, "full.json", rows)
    train = load_alpaca(str(path), test_fraction=0.05, identity=False)
    test = load_alpaca(str(path), split="test", test_fraction=0.05)
    assert len(train) + len(test) == 400 and 5 <= len(test) <= 40
    assert not set(train["instruction"]) & set(test["instruction"])
    # the course's identity rows join the training rows of any source, never its test rows
    with_identity = load_alpaca(str(path), test_fraction=0.05)
    assert len(with_identity) == len(train) + len(load_alpaca("data/identity_zh.json", split="all"))
    assert sum("知微" in o for o in with_identity["output"]) > sum("知微" in o for o in train["output"])


def test_full_data_offline_fails_fast_with_the_alternatives():
    with pytest.raises(DataError, match="local JSON file"):
        load_alpaca(FULL_DATA_ID)


def test_summary_statistics():
    stats = summarize([{"instruction": "ab", "input": "", "output": "abcd"},
                       {"instruction": "abcd", "input": "x", "output": "ab"}])
    assert stats["rows"] == 2 and stats["with_input"] == 1
    assert stats["instruction"] == {"min": 2, "mean": 3.0, "max": 4}


def test_check_command_reports_counts_stats_and_every_problem(tmp_path):
    rows = [{"instruction": "你好", "input": "", "output": "你好！"}, {"instruction": "", "input": "", "output": "x"},
            {"instruction": "a", "input": "", "output": 5}]
    path = write(tmp_path, "mixed.json", rows)
    result = run_module("helpers.data", str(path))
    assert result.returncode == 1
    assert "3 rows, 1 usable" in result.stdout and "2 problem(s)" in result.stdout
    assert "row 2: 'instruction' is empty" in result.stdout and "row 3: 'output' is an int" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr

    ok = run_module("helpers.data", "data/alpaca_zh_sample.json")
    assert ok.returncode == 0 and "0 problem(s)" in ok.stdout and "characters" in ok.stdout


def test_check_command_on_a_broken_file_has_no_traceback(tmp_path):
    path = write(tmp_path, "broken.json", "{not json")
    result = run_module("helpers.data", str(path))
    assert result.returncode == 1 and "is not valid JSON" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
