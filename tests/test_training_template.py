"""TRL's own assistant-only masking for GLM-4-9B: the training chat template, checked against GLM-4's own template,
against ``build_example`` (notebook 03's labels built by hand), and against what TRL's SFTTrainer builds from it.

The template (helpers/glm4_training_template.jinja) is GLM-4-9B-chat's with ``{% generation %}`` blocks around each
answer and the token that ends it, the way TRL's GLM-4-MoE training template does it.
"""

import pytest
from datasets import Dataset

from conftest import labels_of
from helpers import REPO_ROOT
from helpers.data import read_rows
from helpers.formatting import build_example, prepare_dataset, to_conversation, to_messages

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "查询城市的天气",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_CALL = {"messages": [
    {"role": "system", "content": "回答要简短。", "tools": [WEATHER, {"type": "python"}]},
    {"role": "user", "content": "北京今天天气怎么样？"},
    {"role": "assistant", "content": '{"city": "北京"}', "metadata": "get_weather"},
    {"role": "observation", "content": '{"weather": "晴"}'},
    {"role": "assistant", "content": "北京今天晴。"},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气！"}]}


def every_conversation_in_data():
    """Every training and held-out row the course ships in data/, and a tool call with two kinds of tools."""
    rows = [row for path in sorted((REPO_ROOT / "data").glob("*.json*")) if path.name != "corpus_zh.txt"
            for row in read_rows(path)]
    return [*rows, TOOL_CALL]


def test_the_training_template_renders_as_glm4s_own_and_then_the_trained_end(tokenizer, training_tokenizer):
    rows = every_conversation_in_data()
    assert len(rows) > 700
    for row in rows:
        messages = to_messages(row)
        own = tokenizer.apply_chat_template(messages, tokenize=False)
        assert training_tokenizer.apply_chat_template(messages, tokenize=False) == own + "<|user|>", messages[:2]
        prompt = messages[:-1]  # what inference renders: the conversation up to the user's last turn
        assert (training_tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                == tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))


def test_trl_says_the_end_token_is_trained(training_tokenizer, tokenizer):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(training_tokenizer) is True
    assert is_chat_template_stop_token_trained(tokenizer) is False  # GLM-4's own template has no generation blocks


def test_the_template_mask_is_build_examples_labels_on_every_row(tokenizer, training_tokenizer):
    rows = every_conversation_in_data()
    prepared = prepare_dataset(Dataset.from_list([to_conversation(row) for row in rows]), training_tokenizer, 10**6)
    assert len(prepared) == len(rows)
    for row, example in zip(rows, prepared):
        by_hand = build_example(row, tokenizer)
        assert example["input_ids"] == by_hand["input_ids"] and labels_of(example) == by_hand["labels"], row


def test_trls_own_tokenization_gives_build_examples_ids_and_labels(tmp_path, tokenizer, training_tokenizer, tiny_dir):
    """SFTTrainer given raw `messages` rows and assistant_only_loss=True: its input_ids and labels are build_example's."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from helpers.families import GLM4

    rows = every_conversation_in_data()
    conversations = Dataset.from_list([to_conversation(row) for row in rows])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", assistant_only_loss=True,
                     chat_template_path=str(GLM4.training_template), max_length=None, dataset_num_proc=None)
    own = AutoTokenizer.from_pretrained(tiny_dir)  # GLM-4's own template: TRL puts the training one in its place
    trainer = SFTTrainer(model=str(tiny_dir), args=args, train_dataset=conversations, processing_class=own)
    assert own.chat_template == training_tokenizer.chat_template
    built = {tuple(example["input_ids"]): example["labels"] for example in trainer.train_dataset}
    assert len(trainer.train_dataset) == len(rows)
    for row in rows:
        by_hand = build_example(row, tokenizer)
        assert built[tuple(by_hand["input_ids"])] == by_hand["labels"], row  # matched by their ids, in any order
    # and given the course's prepared rows, TRL keeps the ids and builds the same labels from the mask
    prepared = prepare_dataset(conversations, training_tokenizer, 10**6)
    trainer = SFTTrainer(model=str(tiny_dir), args=args, train_dataset=prepared,
                         processing_class=AutoTokenizer.from_pretrained(tiny_dir))
    assert [(ex["input_ids"], ex["labels"]) for ex in trainer.train_dataset] == [
        (ex["input_ids"], labels_of(ex)) for ex in prepared]
