"""The data path: one prefix, prompt masked, answer and end-of-turn trained, over-long rows counted."""

import pytest

from helpers.data import load_alpaca
from helpers.formatting import (END_OF_TURN, IGNORE_INDEX, decode_labels, encode_batch, prepare, to_messages,
                                user_content)


def encode(tokenizer, rows, max_length=1024, **kwargs):
    batch = {key: [row[key] for row in rows] for key in ("instruction", "input", "output")}
    return encode_batch(batch, tokenizer, max_length, **kwargs)


def test_user_content_joins_instruction_and_input():
    assert user_content("翻译成英文", "你好") == "翻译成英文\n\n你好"
    assert user_content("讲个笑话", "") == user_content("讲个笑话", "  \n") == "讲个笑话"
    assert [m["role"] for m in to_messages({"instruction": "a", "output": "b"}, system="s")] == \
        ["system", "user", "assistant"]


ROWS = [
    {"instruction": "写一句问候", "input": "", "output": "你好！"},  # empty input
    {"instruction": "把下面的句子改写得正式一些", "input": "这事儿\n咱明天再说吧", "output": "此事\n我们明日再议。"},
    {"instruction": "Translate 🎉 into 中文", "input": "Party time 🎉🎊", "output": "派对时间到啦 🎉（ﾉ◕ヮ◕）ﾉ*:･ﾟ✧"},
    {"instruction": "列出三个数字", "input": "", "output": "1. 一\n\n2. 二\n\n3. 三\n"},
]


@pytest.mark.parametrize("row", ROWS, ids=["empty-input", "multi-line", "emoji-mixed", "trailing-newline"])
def test_matches_the_template_tokenized_once_plus_the_end_token(tokenizer, row):
    out = encode(tokenizer, [row])
    ids, labels = out["input_ids"][0], out["labels"][0]
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    reference = tokenizer.apply_chat_template(to_messages(row), tokenize=True)["input_ids"]
    assert ids == reference + [end_id]
    gmask = tokenizer.convert_tokens_to_ids("[gMASK]")
    assert ids.count(gmask) == 1 and ids[0] == gmask
    # every prompt token, up to and including <|assistant|>, is masked; everything after is trained
    boundary = ids.index(tokenizer.convert_tokens_to_ids("<|assistant|>")) + 1
    assert labels[:boundary] == [IGNORE_INDEX] * boundary
    assert labels[boundary:] == ids[boundary:]
    assert labels[-1] == end_id
    spans = decode_labels(tokenizer, ids, labels)
    assert [trained for _, trained in spans] == [False, True]
    assert spans[1][0] == "\n" + row["output"] + END_OF_TURN


def test_system_message_is_part_of_the_prompt(tokenizer):
    out = encode(tokenizer, ROWS[:1], system="你是知微。")
    text = tokenizer.decode(out["input_ids"][0])
    assert text.startswith("[gMASK]<sop><|system|>\n你是知微。<|user|>")
    assert decode_labels(tokenizer, out["input_ids"][0], out["labels"][0])[1][0] == "\n你好！<|user|>"


def test_other_end_token(tokenizer):
    out = encode(tokenizer, ROWS[:1], end_token="<|endoftext|>")
    assert out["labels"][0][-1] == tokenizer.eos_token_id == tokenizer.pad_token_id  # trained, not masked


def test_over_long_examples_are_dropped_and_counted(tokenizer, capsys):
    long_row = {"instruction": "写一篇长文", "input": "", "output": "很长的回答。" * 400}
    rows = [ROWS[0], long_row, ROWS[1]]
    prepared, stats = prepare(rows, tokenizer, max_length=128)
    assert (stats.rows, stats.kept, stats.dropped_too_long) == (3, 2, 1)
    assert "3 rows: 2 kept, 1 dropped (33.3%) as longer than 128 tokens" in capsys.readouterr().out
    assert all(n <= 128 for n in prepared["length"])
    assert prepared["length"] == [len(ids) for ids in prepared["input_ids"]]
    # nothing was cut: each kept example still ends its answer with the end token
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert all(labels[-1] == end_id for labels in prepared["labels"])


def test_prepares_the_whole_sample_in_order(tokenizer):
    dataset = load_alpaca("sample")
    prepared, stats = prepare(dataset, tokenizer, max_length=4096, batch_size=64, verbose=False)
    assert stats.kept == len(dataset) and prepared.column_names == ["input_ids", "labels", "length"]
    first = tokenizer.apply_chat_template(to_messages(dataset[0]), tokenize=True)["input_ids"]
    assert prepared[0]["input_ids"][:-1] == first  # order kept across batches
    last = tokenizer.apply_chat_template(to_messages(dataset[-1]), tokenize=True)["input_ids"]
    assert prepared[-1]["input_ids"][:-1] == last


def test_prepare_benchmark_prints_one_json_line():
    import json
    import subprocess
    import sys

    from helpers import REPO_ROOT

    result = subprocess.run([sys.executable, "benchmarks/prepare_data.py", "--rows", "300"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["rows"] == 300 and line["ours_rows_per_s"] > 0 and line["per_example_rows_per_s"] > 0
    assert line["ratio"] > 0 and line["kept"] == 300
    assert 150 < line["chars_per_example"] < 320  # shaped like Alpaca-GPT4-zh (about 230)


def test_a_padded_call_before_does_not_pad_or_cut_the_examples(tokenizer):
    rows = [{"instruction": "你好", "input": "", "output": "你好！"},
            {"instruction": "写一首关于秋天的短诗。", "input": "", "output": "秋风起，落叶黄，一行大雁向南方。"}]
    clean, _ = prepare(rows, tokenizer, 256, verbose=False)
    tokenizer(["短", "一句长一些的话，用来把批次补齐"], padding=True)  # as a batched generate leaves the tokenizer
    backend = tokenizer.backend_tokenizer
    assert backend.padding is not None
    after, _ = prepare(rows, tokenizer, 256, verbose=False)
    assert after["input_ids"] == clean["input_ids"] and after["labels"] == clean["labels"]
    assert backend.padding is not None  # the caller's setting is left as it was
    backend.no_padding()
