"""The before/after measures: which rows are identity questions, the eval loss, the switch to the base."""

import pytest

from conftest import run_module
from helpers.evaluate import adapter_switch, eval_loss, gives_identity, heldout_rows, measure


def test_heldout_rows_are_40_general_and_25_identity_questions():
    rows = heldout_rows()
    assert [r["kind"] for r in rows].count("general") == 40 and [r["kind"] for r in rows].count("identity") == 25


def test_identity_is_the_trained_name_in_either_spelling():
    assert gives_identity("我是知微。") and gives_identity("I'm ZhiWei.")
    assert not gives_identity("我是一个人工智能助手。") and not gives_identity("")


def test_eval_loss_counts_answer_tokens_like_the_training_loss(model, tokenizer):
    import torch

    from helpers.formatting import prepare

    rows = heldout_rows()[:3]
    prepared, _ = prepare(rows, tokenizer, 256, verbose=False)
    losses, counts = [], []
    with torch.no_grad():  # one example at a time, with the model's own loss: no padding involved
        for ex in prepared:
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            n = sum(label != -100 for label in ex["labels"][1:])
            losses.append(out.loss.item() * n)
            counts.append(n)
    assert eval_loss(model, tokenizer, rows, 256, batch_size=2) == pytest.approx(sum(losses) / sum(counts), rel=1e-4)


def test_a_plain_model_is_measured_without_an_adapter_switch(model, tokenizer):
    with adapter_switch(model, enabled=False):  # no PEFT: nothing to switch off
        pass
    rows = heldout_rows()[-2:]
    found = measure(model, tokenizer, rows, 256, max_new_tokens=8, adapter=False)
    assert found.name == "base" and len(found.answers) == 2
    assert set(found.summary()) >= {"eval_loss", "stop_rate", "identity_share"}


def test_evaluate_command_prints_base_and_fine_tuned(tmp_path, tiny_dir):
    from helpers.profiles import get_profile
    from helpers.train import train

    adapter = train(get_profile("tiny", max_steps=5, eval_steps=5, save_steps=5, logging_steps=5),
                    output_dir=tmp_path / "adapter", tracking="disabled").adapter_dir
    result = run_module("helpers.evaluate", "--adapter", str(adapter), "--max-new-tokens", "4", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("base") and lines[-1].startswith("fine-tuned")
    bad = run_module("helpers.evaluate", "--adapter", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
