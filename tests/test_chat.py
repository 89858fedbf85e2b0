"""The chat command: adapter or full model, piped turns, /reset and /exit, and clear refusals."""

import json
import shutil

import pytest

from conftest import run_module
from helpers import CourseError
from helpers.chat import adapter_base, load_chat_model, reply
from helpers.profiles import get_profile
from helpers.train import train


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("chat") / "adapter"
    profile = get_profile("tiny", max_steps=10, eval_steps=10, save_steps=10, logging_steps=5)
    return train(profile, output_dir=out, tracking="disabled").adapter_dir


def test_piped_conversation_with_reset_and_exit(adapter):
    turns = "你是谁？\n\n/reset\n12 乘以 3 等于多少？\n/exit\n这一行不会被读到\n"
    result = run_module("helpers.chat", "--adapter", str(adapter), "--max-new-tokens", "16", input=turns)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("assistant> ") == 2  # two questions answered, the line after /exit never read
    assert "(empty message: type a question, /reset or /exit)" in out and "(new conversation)" in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--adapter", "no/such/dir"], "does not exist: train one with `python -m helpers.train`"),
    (["--adapter", "weights/tiny-glm4"], "is not a LoRA adapter: it has no adapter_config.json (it holds a full model"),
    ([], "give either --adapter DIR"),
])
def test_bad_directories_are_refused_in_one_sentence(args, message):
    result = run_module("helpers.chat", *args, input="")
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_adapter_whose_base_is_missing(adapter, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    run = json.loads((moved / "course_run.json").read_text(encoding="utf-8"))
    run["base_model"] = "weights/not-built-yet"
    (moved / "course_run.json").write_text(json.dumps(run), encoding="utf-8")
    with pytest.raises(CourseError, match="base model weights/not-built-yet is missing"):
        adapter_base(moved)


def test_adapter_trained_on_another_base_is_refused(adapter, tmp_path, tiny_dir):
    from transformers import AutoConfig, GlmForCausalLM

    other = tmp_path / "other-base"
    config = AutoConfig.from_pretrained(tiny_dir)
    config.hidden_size, config.intermediate_size = 96, 320  # another model of the same family
    GlmForCausalLM(config).save_pretrained(other)
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    run = json.loads((moved / "course_run.json").read_text(encoding="utf-8"))
    run["base_model"] = str(other)
    (moved / "course_run.json").write_text(json.dumps(run), encoding="utf-8")
    with pytest.raises(CourseError, match="trained on another base model"):
        load_chat_model(adapter=moved)


def test_merged_model_answers_exactly_as_base_plus_adapter(adapter, tmp_path):
    model, tokenizer = load_chat_model(adapter=adapter)
    messages = [{"role": "user", "content": "你是谁？"}]
    expected = reply(model, tokenizer, messages, max_new_tokens=24)
    merged_dir = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    merged, merged_tokenizer = load_chat_model(model=merged_dir)
    assert reply(merged, merged_tokenizer, messages, max_new_tokens=24) == expected
    result = run_module("helpers.chat", "--model", str(merged_dir), "--max-new-tokens", "8", input="你好\n")
    assert result.returncode == 0 and "assistant> " in result.stdout


def test_streaming_pieces_add_up_to_the_answer(adapter):
    model, tokenizer = load_chat_model(adapter=adapter)
    pieces = []
    text, stopped = reply(model, tokenizer, [{"role": "user", "content": "你好"}], max_new_tokens=20,
                          stream=pieces.append)
    assert "".join(pieces).strip() == text and isinstance(stopped, bool)


def test_batched_replies_equal_one_by_one(model, tokenizer):
    from helpers.chat import reply_batch

    prompts = ["你是谁？", "把下面的句子翻译成英文。\n\n今天很冷。", "写一句诗。", "1 加 1 等于几？", "hi"]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # as a training set-up may leave it
    try:
        batched = reply_batch(model, tokenizer, conversations, max_new_tokens=12, batch_size=3)
        assert tokenizer.padding_side == "right"  # left only while generating, then restored
    finally:
        tokenizer.padding_side = side
    assert batched == [reply(model, tokenizer, c, max_new_tokens=12) for c in conversations]
