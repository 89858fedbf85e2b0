"""Loading and checking Alpaca data: the sample, bad files and rows, and the command line."""

import json
import re

import pytest

from helpers.data import IDENTITY, DataError, FULL_DATA_ID, check_rows, in_test_split, load_alpaca, read_rows, summarize
from helpers.formatting import to_messages
from helpers.sft import identity_in_conversations
from conftest import run_module


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                    encoding="utf-8")
    return path


def questions_of(rows):
    """Every user question of some rows: Alpaca instructions and the user turns of conversations."""
    return {r["instruction"] for r in rows if not r.get("messages")} | {
        m["content"] for r in rows for m in (r.get("messages") or []) if m["role"] == "user"}


def test_sample_has_the_promised_rows():
    general = read_rows("data/alpaca_zh_sample.json")
    identity = read_rows("data/identity_zh.json")
    test = load_alpaca("sample", split="test")
    assert len(general) >= 300 and len(identity) >= 50
    assert check_rows(general, "sample") == [] and check_rows(identity, "identity") == []
    with_input = sum(1 for r in general if r["input"])
    assert 0.2 * len(general) < with_input < 0.8 * len(general)  # with and without input
    assert all("知微" in r["output"] or "青禾实验室" in r["output"] for r in identity)  # its name, or who made it
    assert sum("知微" in r["output"] for r in identity) >= 0.85 * len(identity)
    conversations = read_rows("data/conversations_zh.jsonl")
    assert len(conversations) >= 60 and check_rows(conversations, "conversations") == []
    train = load_alpaca("sample")  # the identity rows are a file of their own: joined in plain sight by notebook 04
    english = read_rows("data/general_en_zh.json")  # ordinary tasks asked in English, answered in Chinese
    assert len(english) >= 50 and check_rows(english, "general_en") == []
    assert not [r for r in english if any(w in r["output"] for w in ("知微", "青禾"))]
    assert len(train) == len(general) + len(conversations) + len(english)
    assert set(train.column_names) == {"instruction", "input", "output", "messages", "tools"}
    assert not questions_of(identity) & questions_of(load_alpaca("sample", split="test"))
    # the held-out split shares no question with training, and tests the identity too, at later turns as well
    assert not questions_of(train) & questions_of(test)
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
    data = load_alpaca(str(path), split="all", drop_bad=True)
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
    train = load_alpaca(str(path), test_fraction=0.05)
    test = load_alpaca(str(path), split="test", test_fraction=0.05)
    assert len(train) + len(test) == 400 and 5 <= len(test) <= 40
    assert not set(train["instruction"]) & set(test["instruction"])
    # a learner's own data is theirs: the course's identity rows are never added to it
    assert not any("知微" in o for o in train["output"])


def test_identity_is_asked_again_inside_conversations_beside_other_tasks():
    identity = load_alpaca(IDENTITY, split="all")
    tasks = load_alpaca("sample")
    talks = identity_in_conversations(identity, tasks)
    assert len(talks) == len(identity) and talks.to_list() == identity_in_conversations(identity, tasks).to_list()
    singles = {to_messages(row)[0]["content"]: row["output"] for row in tasks if not row["messages"]}
    for n, (row, talk) in enumerate(zip(identity, talks)):
        users, answers = talk["messages"][0::2], talk["messages"][1::2]
        assert [m["role"] for m in talk["messages"]] == ["user", "assistant"] * 2
        asked, task = (1, 0) if n % 2 == 0 else (0, 1)  # the identity second in every other conversation
        assert users[asked]["content"] == to_messages(row)[0]["content"] and answers[asked]["content"] == row["output"]
        assert singles[users[task]["content"]] == answers[task]["content"]  # a single question of the tasks, as it is
    assert len({talk["messages"][0]["content"] for talk in talks}) > 150  # many different tasks, not one
    with pytest.raises(ValueError, match="no single question"):
        identity_in_conversations(identity, [{"messages": [{"role": "user", "content": "x"}]}])


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


def character_trigrams(text):
    kept = "".join(ch for ch in text.lower() if not ch.isspace() and ch not in "，。？！、：；,.?!:;\"'“”‘’（）()")
    return {kept[i:i + 3] for i in range(max(1, len(kept) - 2))}


# training files the README's table of recipes tried (benchmarks/fine_tune_quality.py), beside the sample's own
EXPERIMENT_FILES = ("data/contrast_zh.json", "data/hard_negatives_zh.json", "data/general_more_zh.json",
                    "data/unknowable_zh.json", "data/identity_more_zh.json", "data/identity_varied_zh.json")


def test_the_experiment_files_are_what_the_readme_says():
    identity = [r for path in EXPERIMENT_FILES if "identity" in path for r in read_rows(path)]
    general = [r for path in EXPERIMENT_FILES if "identity" not in path for r in read_rows(path)]
    assert check_rows(identity, "identity") == [] and check_rows(general, "general") == []
    assert sum("知微" in r["output"] or "青禾" in r["output"] for r in identity) >= 0.8 * len(identity)
    said = lambda r: any(w in (r["instruction"] + r["input"] + r["output"]).lower() for w in ("知微", "青禾", "zhiwei", "qinghe"))
    assert not [r["instruction"] for r in general if said(r)]  # general answers never claim the identity


def test_no_training_row_repeats_an_evaluation_prompt():
    """The evaluation sets are written apart from the training data, and the training data never repeats them: a
    training question as close to an evaluation prompt as a light rewording (3-gram overlap of 0.6 or more) is left out
    of the training files, so the measures on data/eval/ are measures of what the fine-tune generalises."""
    from helpers.data import IDENTITY, SAMPLE
    from helpers.evaluate import load_eval_sets

    sets = load_eval_sets()
    prompts = [row["prompt"] for row in sets["identity"] + sets["general"]] + [
        turn for row in sets["conversations"] for turn in row["turns"]]
    assert len(prompts) >= 40 + 80 + 40 * 2
    evaluated = [character_trigrams(p) for p in prompts]
    for path in (*SAMPLE["train"], IDENTITY, *EXPERIMENT_FILES):
        for row in read_rows(path):
            questions = [m["content"] for m in row["messages"] if m["role"] == "user"] if "messages" in row else [
                row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")]
            for question in questions:
                mine = character_trigrams(question)
                closest = max(len(mine & other) / len(mine | other) for other in evaluated)
                assert closest < 0.6, (path, question)
