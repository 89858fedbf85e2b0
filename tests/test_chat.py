"""Chatting: reply and its streaming, batched replies, the Chat history, the command line, and its refusals."""

import json
import shutil

import pytest

from conftest import run_main, run_module
from helpers import CourseError
from helpers.chat import Chat, load_adapter, main, reply
from helpers.checks import check_adapter
from helpers.evaluate import reply_batch

# The mechanics of loading, refusing, merging and chatting need an adapter, not a trained one: random_adapter.


def test_piped_conversation_with_reset_and_exit(random_adapter):
    turns = "你是谁？\n\n/reset\n12 乘以 3 等于多少？\n/exit\n这一行不会被读到\n"
    result = run_module("helpers.chat", "--adapter", str(random_adapter), "--max-new-tokens", "16", input=turns)
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
    code, _, err = run_main(main, *args)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def moved(adapter, tmp_path, **changes):
    """A copy of the adapter whose recipe.yaml says something else."""
    from helpers.recipes import Recipe

    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    Recipe.load(copy).replace(**changes).save(copy)
    return copy


def test_adapter_whose_base_is_missing(random_adapter, tmp_path):
    with pytest.raises(CourseError, match="base model weights/not-built-yet is missing"):
        check_adapter(moved(random_adapter, tmp_path, model_name_or_path="weights/not-built-yet"))


def test_adapter_trained_on_another_base_is_refused_before_loading(random_adapter, tmp_path, tiny_dir):
    from transformers import AutoConfig, GlmForCausalLM

    other = tmp_path / "other-base"
    config = AutoConfig.from_pretrained(tiny_dir)
    config.hidden_size, config.intermediate_size = 96, 320  # another model of the same family
    GlmForCausalLM(config).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_dir / name, other / name)
    with pytest.raises(CourseError, match=r"does not fit .*needs \[16, \d+\], the adapter has \[16, \d+\]\): it was trained on another base model"):
        check_adapter(moved(random_adapter, tmp_path, model_name_or_path=str(other)))


def test_an_adapter_with_the_whole_lm_head_beside_it_is_checked_and_loads(random_adapter, tmp_path, tiny_dir):
    """`--lora_modules_to_save lm_head` saves that layer whole beside the LoRA matrices: its shape is checked too."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, GlmForCausalLM

    from helpers.recipes import read_recipe

    recipe, adapter = read_recipe("tiny"), tmp_path / "adapter"
    shutil.copytree(random_adapter, adapter)
    config = LoraConfig(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], target_modules=recipe["lora_target_modules"],
                        modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), config).save_pretrained(adapter)
    check_adapter(adapter)
    model, _, _ = load_adapter(adapter)
    assert any(name.endswith("lm_head.modules_to_save.default.weight") for name, _ in model.named_parameters())
    other = tmp_path / "other-base"
    config = AutoConfig.from_pretrained(tiny_dir)
    config.vocab_size += 64  # the same layers, a larger vocabulary: only lm_head differs
    GlmForCausalLM(config).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_dir / name, other / name)
    vocab, hidden = config.vocab_size, config.hidden_size
    with pytest.raises(CourseError, match=rf"\(lm_head needs \[{vocab}, {hidden}\], the adapter has \[{vocab - 64}, {hidden}\]\)"):
        check_adapter(moved(adapter, tmp_path / "moved", model_name_or_path=str(other)))


def test_merged_model_answers_exactly_as_base_plus_adapter(random_adapter, tmp_path):
    model, tokenizer, recipe = load_adapter(random_adapter)
    messages = [{"role": "user", "content": "你是谁？"}]
    expected = reply(model, tokenizer, messages, max_new_tokens=24)
    merged_dir = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    recipe.save(merged_dir)
    result = run_module("helpers.chat", "--model", str(merged_dir), "--max-new-tokens", "24", input="你是谁？\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("assistant> ", 1)[1].strip().startswith(expected[0])
    code, _, err = run_main(main, "--model", str(random_adapter))
    assert code == 2 and "is a LoRA adapter, not a full model: use --adapter" in err


def test_streaming_pieces_add_up_to_the_answer(random_adapter):
    model, tokenizer, _ = load_adapter(random_adapter)
    pieces = []
    text, stopped = reply(model, tokenizer, [{"role": "user", "content": "你好"}], max_new_tokens=20,
                          stream=pieces.append)
    assert text and "".join(pieces).strip() == text  # the pieces, joined, are the answer
    assert (text, stopped) == reply(model, tokenizer, [{"role": "user", "content": "你好"}], max_new_tokens=20)


def test_a_failing_generation_ends_the_stream_and_raises(model, tokenizer):
    with pytest.raises(ValueError):  # a negative length: generate refuses it inside the thread
        reply(model, tokenizer, [{"role": "user", "content": "你好"}], max_new_tokens=-1, stream=lambda _: None)


def test_chat_keeps_the_history_and_resets(model, tokenizer):
    chat = Chat(model, tokenizer, max_new_tokens=6, system="你是知微。")
    answer, _ = chat.send("你好")
    chat.send("你是谁？")
    assert chat.turn == 2 and [m["role"] for m in chat.history] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.history[2]["content"] == answer
    chat.reset()
    assert chat.turn == 0 and chat.history == [{"role": "system", "content": "你是知微。"}]


def test_batched_replies_equal_one_by_one(model, tokenizer):
    prompts = ["你是谁？", "把下面的句子翻译成英文。\n\n今天很冷。", "写一句诗。", "1 加 1 等于几？", "hi"]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # as a training set-up may leave it
    try:
        batched = reply_batch(model, tokenizer, conversations, max_new_tokens=12, batch_size=3)
        assert tokenizer.padding_side == "right"  # left only while generating, then restored
    finally:
        tokenizer.padding_side = side
    assert batched == [reply(model, tokenizer, c, max_new_tokens=12) for c in conversations]


def test_bytes_that_are_not_utf8_are_replaced_and_said(random_adapter):
    import subprocess
    import sys

    from helpers import REPO_ROOT

    result = subprocess.run([sys.executable, "-m", "helpers.chat", "--adapter", str(random_adapter), "--max-new-tokens", "4"],
                            cwd=REPO_ROOT, input="你好".encode() + b"\xff\xfe\n" + "你是谁？\n".encode(),
                            capture_output=True, timeout=120)
    out = result.stdout.decode("utf-8")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert out.count("(this line is not valid UTF-8: the bytes that are not were replaced with �)") == 1
    assert out.count("assistant> ") == 2 and b"Traceback" not in result.stderr


def test_a_message_longer_than_the_context_is_refused_and_the_chat_goes_on(random_adapter):
    turns = "你好" * 1200 + "\n你是谁？\n"  # 2,400 characters: more tokens than tiny's 1,024 positions
    result = run_module("helpers.chat", "--adapter", str(random_adapter), "--max-new-tokens", "4", input=turns, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "(message refused: the conversation is " in result.stdout and "but the model's context is 1024" in result.stdout
    assert result.stdout.count("assistant> ") == 2 and "exceeded the model's predefined maximum length" not in result.stderr


@pytest.fixture()
def short_context(model):
    """The tiny model with only 64 positions, so a conversation outgrows it in a few turns."""
    positions, model.config.max_position_embeddings = model.config.max_position_embeddings, 64
    yield model
    model.config.max_position_embeddings = positions


def test_a_long_history_drops_its_oldest_turns(short_context, tokenizer):
    chat = Chat(short_context, tokenizer, max_new_tokens=8, system="你是知微。")
    for question in ["请介绍一下长城的历史。", "它有多长？", "为什么要修建它？", "现在还能去参观吗？"]:
        chat.send(question)
        prompt = tokenizer.apply_chat_template(chat.history[:-1], add_generation_prompt=True)["input_ids"]
        assert len(prompt) <= 64 - 8  # what the model read left room for a whole answer in its 64 positions
    assert chat.dropped >= 1 and chat.history[0]["role"] == "system"  # the system message is never dropped
    assert chat.history[-2]["content"] == "现在还能去参观吗？"
    history = list(chat.history)
    with pytest.raises(ValueError, match=r"the conversation is \d+ tokens, but the model's context is 64"):
        chat.send("长城" * 60)  # alone longer than the context: refused and forgotten
    assert chat.history == history


def test_generation_never_runs_past_the_positions(short_context, tokenizer):
    answer, stopped = reply(short_context, tokenizer, [{"role": "user", "content": "请写一篇很长的文章。"}], max_new_tokens=500)
    prompt = len(tokenizer.apply_chat_template([{"role": "user", "content": "请写一篇很长的文章。"}],
                                                add_generation_prompt=True)["input_ids"])
    assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 64 - prompt + 2  # capped at the room left
    with pytest.raises(ValueError, match="a prompt among conversations 1-64 is longer than the model's context of 64"):
        reply_batch(short_context, tokenizer, [[{"role": "user", "content": "长城" * 60}]], max_new_tokens=4)


def test_evaluate_refuses_data_longer_than_the_context_in_one_line(random_adapter, tmp_path, tokenizer):
    from helpers.data import read_rows

    text = "".join(row["output"] for row in read_rows("data/alpaca_zh_sample.json"))[:4000]
    assert len(tokenizer(text)["input_ids"]) > 1024  # longer than tiny's context
    from helpers.data import in_test_split

    held_out = lambda rows: [row for row in rows if in_test_split(row, 0.02)]  # what evaluate measures of a file
    short = held_out([{"instruction": f"问题 {i}", "input": "", "output": "短。"} for i in range(300)])[:2]
    long = held_out([{"instruction": text[:3000 + i], "input": "", "output": "短。"} for i in range(300)])[:1]
    rows = short + long  # one long question among short ones, all on the held-out side
    data = tmp_path / "long.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    from helpers.evaluate import main as evaluate

    code, _, err = run_main(evaluate, "--adapter", str(random_adapter), "--data", str(data))
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "longer than the model's context of 1024" in last
    assert "Traceback" not in err
