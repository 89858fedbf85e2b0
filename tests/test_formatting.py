"""The data path: one prefix, prompt masked, answer and end-of-turn trained, over-long rows counted."""

import pytest
from datasets import Dataset

from helpers.data import load_alpaca
from conftest import labels_of
from helpers.formatting import build_example, prepare_dataset, to_messages


def test_to_messages_joins_instruction_and_input():
    assert to_messages({"instruction": "翻译成英文", "input": "你好", "output": "Hello"})[0]["content"] == "翻译成英文\n\n你好"
    for blank in ("", "  \n"):
        assert to_messages({"instruction": "讲个笑话", "input": blank, "output": "…"}) == [
            {"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "…"}]


ROWS = [
    {"instruction": "写一句问候", "input": "", "output": "你好！"},  # empty input
    {"instruction": "把下面的句子改写得正式一些", "input": "这事儿\n咱明天再说吧", "output": "此事\n我们明日再议。"},
    {"instruction": "Translate 🎉 into 中文", "input": "Party time 🎉🎊", "output": "派对时间到啦 🎉（ﾉ◕ヮ◕）ﾉ*:･ﾟ✧"},
    {"instruction": "列出三个数字", "input": "", "output": "1. 一\n\n2. 二\n\n3. 三\n"},
]


@pytest.mark.parametrize("row", ROWS, ids=["empty-input", "multi-line", "emoji-mixed", "trailing-newline"])
def test_matches_the_template_tokenized_once_plus_the_end_token(tokenizer, row):
    example = build_example(row, tokenizer)
    ids, labels = example["input_ids"], example["labels"]
    end_id = tokenizer.convert_tokens_to_ids("<|user|>")
    reference = tokenizer.apply_chat_template(to_messages(row), tokenize=True)["input_ids"]
    assert ids == reference + [end_id]
    gmask = tokenizer.convert_tokens_to_ids("[gMASK]")
    assert ids.count(gmask) == 1 and ids[0] == gmask
    # every prompt token, up to and including <|assistant|>, is masked; everything after is trained
    boundary = ids.index(tokenizer.convert_tokens_to_ids("<|assistant|>")) + 1
    assert labels[:boundary] == [-100] * boundary
    assert labels[boundary:] == ids[boundary:] and labels[-1] == end_id
    assert tokenizer.decode(ids[boundary:]) == "\n" + row["output"] + "<|user|>"


def test_a_template_that_does_not_render_the_prompt_as_a_prefix_is_refused(tokenizer):
    other = tokenizer.chat_template
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}"
    try:
        with pytest.raises(AssertionError, match="the template must write every turn after the earlier ones"):
            build_example(ROWS[0], tokenizer)
    finally:
        tokenizer.chat_template = other


def test_over_long_examples_are_dropped_and_counted(training_tokenizer, capsys):
    long_row = {"instruction": "写一篇长文", "input": "", "output": "很长的回答。" * 400}
    prepared = prepare_dataset(Dataset.from_list([ROWS[0], long_row, ROWS[1]]), training_tokenizer, max_length=128)
    assert "3 rows -> 2 examples; 1 (33.3%) longer than 128 tokens dropped" in capsys.readouterr().out
    assert prepared.column_names == ["messages", "tools", "input_ids", "assistant_masks"] and len(prepared) == 2
    # nothing was cut: each kept example still ends its answer with the end token, in the mask
    end_id = training_tokenizer.convert_tokens_to_ids("<|user|>")
    assert all(len(ex["input_ids"]) <= 128 and labels_of(ex)[-1] == end_id for ex in prepared)


def test_prepares_the_whole_sample_in_order(tokenizer, training_tokenizer):
    dataset = load_alpaca("sample")
    prepared = prepare_dataset(dataset, training_tokenizer, max_length=4096)
    assert len(prepared) == len(dataset)
    for i in (0, len(dataset) - 1):  # GLM-4's own rendering, then the trained end token
        assert prepared[i]["input_ids"][:-1] == tokenizer.apply_chat_template(to_messages(dataset[i]))["input_ids"]


def test_prepare_refuses_a_template_without_generation_blocks(tokenizer):
    with pytest.raises(ValueError, match="has no {% generation %} blocks: set tokenizer.chat_template"):
        prepare_dataset(Dataset.from_list(ROWS), tokenizer, 256)


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


def test_a_padded_call_before_does_not_pad_or_cut_the_examples(training_tokenizer):
    rows = Dataset.from_list([{"instruction": "你好", "input": "", "output": "你好！"},
                              {"instruction": "写一首关于秋天的短诗。", "input": "", "output": "秋风起，落叶黄，一行大雁向南方。"}])
    clean = prepare_dataset(rows, training_tokenizer, 256)
    training_tokenizer(["短", "一句长一些的话，用来把批次补齐"], padding=True)  # as a batched generate leaves it
    after = prepare_dataset(rows, training_tokenizer, 256)
    assert after["input_ids"] == clean["input_ids"] and after["assistant_masks"] == clean["assistant_masks"]
    assert [len(ids) for ids in after["input_ids"]] == [len(ids) for ids in clean["input_ids"]]  # no padding
