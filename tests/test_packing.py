"""Padding-free batches (what BFD packing trains on) give exactly the loss of the examples taken one by one."""

import pytest
import torch

from conftest import labels_of
from helpers.data import load_alpaca
from helpers.formatting import prepare_dataset


def separate_loss(model, examples) -> float:
    total, count = 0.0, 0
    for ex in examples:
        out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]), use_cache=False)
        n = sum(label != -100 for label in ex["labels"][1:])
        total, count = total + out.loss.item() * n, count + n
    return total / count


def test_padding_free_batch_attends_within_each_example_only(model, training_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = training_tokenizer
    prepared = prepare_dataset(load_alpaca("sample", split="test").select(range(4)), tokenizer, 256)
    examples = [{"input_ids": ex["input_ids"], "labels": labels_of(ex)} for ex in prepared]  # as TRL builds them
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                       use_cache=False).loss.item()
        # the same row without position ids is one long text: each example then sees the ones before it
        leaking = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss.item()
        expected = separate_loss(model, examples)
    assert packed == pytest.approx(expected, rel=1e-5)
    assert abs(leaking - expected) > 1e-3
