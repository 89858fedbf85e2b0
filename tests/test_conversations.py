"""GLM-4 `messages` data: loaded, checked row by row, and formatted with every assistant turn trained."""

import json
import re

import pytest

from conftest import labels_of, run_module
from helpers.data import DataError, check_rows, in_test_split, load_alpaca, read_rows
from helpers.formatting import build_example, prepare_dataset, to_messages

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "查询城市的天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CALL = {"messages": [  # as GLM-4's fine-tuning demo writes a tool call: tools on the system message
    {"role": "system", "content": "", "tools": TOOLS},
    {"role": "user", "content": "北京今天天气怎么样？"},
    {"role": "assistant", "content": '{"city": "北京"}', "metadata": "get_weather"},
    {"role": "observation", "content": '{"weather": "晴", "temperature": 25}'},
    {"role": "assistant", "content": "北京今天晴，25 度。"},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气！"}]}
THREE_TURNS = {"messages": [
    {"role": "system", "content": "回答尽量简短。"},
    {"role": "user", "content": "推荐一种水果。"}, {"role": "assistant", "content": "苹果。"},
    {"role": "user", "content": "为什么？"}, {"role": "assistant", "content": "常见，又有营养。"},
    {"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是知微。"}]}
ALPACA = {"instruction": "写一句问候", "input": "", "output": "你好！"}


def write_jsonl(tmp_path, rows, name="talk.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_pieces(tokenizer, example):
    """The decoded runs of trained tokens (labels not -100), in order."""
    pieces, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            pieces, current = pieces + [tokenizer.decode(current)], []
    return pieces + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("row", [THREE_TURNS, TOOL_CALL], ids=["three-turns", "tool-call"])
def test_ids_are_the_template_tokenized_once_plus_the_end_token(tmp_path, tokenizer, row):
    loaded = load_alpaca(str(write_jsonl(tmp_path, [row])), split="all")[0]  # through a Dataset
    assert to_messages(loaded) == row["messages"]
    example = build_example(loaded, tokenizer)
    reference = tokenizer.apply_chat_template(row["messages"])["input_ids"]
    assert example["input_ids"] == reference + [tokenizer.convert_tokens_to_ids("<|user|>")]
    assert example["input_ids"].count(tokenizer.convert_tokens_to_ids("[gMASK]")) == 1
    assert example["input_ids"].count(tokenizer.convert_tokens_to_ids("<sop>")) == 1


def test_every_assistant_turn_and_the_token_that_ends_it_is_trained(tokenizer):
    example = build_example(THREE_TURNS, tokenizer)
    assert trained_pieces(tokenizer, example) == ["\n苹果。<|user|>", "\n常见，又有营养。<|user|>", "\n我是知微。<|user|>"]
    # nothing of the system or user turns is trained, and each <|assistant|> that opens a turn is masked
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert all(label == -100 for token, label in zip(example["input_ids"], example["labels"]) if token == assistant)


def test_a_tool_call_is_trained_up_to_observation_and_the_result_is_not(tokenizer):
    pieces = trained_pieces(tokenizer, build_example(TOOL_CALL, tokenizer))
    assert pieces == ['get_weather\n{"city": "北京"}<|observation|>', "\n北京今天晴，25 度。<|user|>", "\n不客气！<|user|>"]


def test_a_single_turn_conversation_is_built_like_the_same_alpaca_row(tokenizer):
    as_messages = {"messages": to_messages(ALPACA)}
    assert build_example(as_messages, tokenizer) == build_example(ALPACA, tokenizer)


def test_a_messages_file_loads_beside_alpaca_rows_and_prepares(tmp_path, tokenizer, training_tokenizer):
    path = write_jsonl(tmp_path, [ALPACA, THREE_TURNS, TOOL_CALL])
    rows = load_alpaca(str(path), split="all")
    assert len(rows) == 3 and {"messages", "tools", "instruction"} <= set(rows.column_names)
    assert to_messages(rows[0]) == to_messages(ALPACA)  # an Alpaca row among conversations is still one
    prepared = prepare_dataset(rows, training_tokenizer, max_length=10**6)
    by_hand = build_example(THREE_TURNS, tokenizer)
    assert len(prepared) == 3 and prepared[1]["input_ids"] == by_hand["input_ids"]
    assert labels_of(prepared[1]) == by_hand["labels"]
    assert labels_of(prepared[2]) == build_example(TOOL_CALL, tokenizer)["labels"]  # tools: its own call


@pytest.mark.parametrize("messages,message", [
    ([], "row 1: has no messages"),
    ([{"role": "bot", "content": "你好"}], "row 1: message 1 has the role 'bot': use system, user, assistant or observation"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "三"}],
     "row 1: message 1 (user): 'content' is an int, not a string"),
    ([{"role": "user", "content": "你好"}], "row 1: ends with a user turn: end it with the assistant's answer"),
    ([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}, {"role": "assistant", "content": "在吗？"}],
     "row 1: messages 2 and 3 are two assistant turns in a row"),
    ([{"role": "assistant", "content": "你好！"}], "row 1: message 1 (assistant) answers before any user turn"),
    ([{"role": "user", "content": "查天气"}, {"role": "observation", "content": "晴"}, {"role": "assistant", "content": "晴"}],
     "row 1: message 2 (observation) does not follow an assistant's tool call"),
    ([{"role": "user", "content": "你好"}, {"role": "system", "content": "简短"}, {"role": "assistant", "content": "好"}],
     "row 1: message 2 (system): only the first message may be a system message"),
    ([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "  "}], "row 1: message 2 (assistant) is empty"),
])
def test_malformed_conversations_are_named_with_the_fix(tmp_path, messages, message):
    path = write_jsonl(tmp_path, [{"messages": messages}, THREE_TURNS])
    assert check_rows(read_rows(path), "talk.jsonl")[0].startswith(f"talk.jsonl {message}")
    with pytest.raises(DataError, match=re.escape(message)):
        load_alpaca(str(path), split="all")


def test_the_check_command_reads_a_messages_file(tmp_path):
    good = run_module("helpers.data", str(write_jsonl(tmp_path, [THREE_TURNS, TOOL_CALL, ALPACA])))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "3 rows, 3 usable" in good.stdout and "2 conversations" in good.stdout and "6 assistant turns" in good.stdout
    bad = run_module("helpers.data", str(write_jsonl(tmp_path, [THREE_TURNS, {"messages": [{"role": "user", "content": "嗨"}]}])))
    assert bad.returncode == 1 and "row 2: ends with a user turn" in bad.stdout
    assert "has no 'instruction' field" not in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


def test_conversations_split_by_their_text():
    moved = {"messages": [dict(m) for m in THREE_TURNS["messages"]]}
    moved["messages"][-1]["content"] = "另一个回答"  # the answers do not decide the side: the questions do
    sides = {fraction: in_test_split(THREE_TURNS, fraction) for fraction in (0.0, 1.0)}
    assert sides == {0.0: False, 1.0: True}
    assert all(in_test_split(THREE_TURNS, f) == in_test_split(moved, f) for f in (0.1, 0.3, 0.5, 0.7, 0.9))


def test_a_conversation_that_ends_on_a_tool_call_is_refused(tmp_path):
    call_last = {"messages": TOOL_CALL["messages"][:3]}  # the call, with no result and no answer after it
    assert check_rows([call_last], "talk.jsonl") == [
        "talk.jsonl row 1: ends with a tool call: end it with the assistant's answer, which is what is trained"]
