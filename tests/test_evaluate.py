"""The before/after measures: which rows are identity questions, the eval loss, the switch to the base."""

import json

import pytest
import torch

from conftest import labels_of, run_main
from helpers.data import load_alpaca
from helpers.evaluate import eval_loss, gives_identity, measure, measure_turns
from helpers.formatting import prepare_dataset, to_messages


def test_heldout_rows_are_40_general_and_25_identity_questions_and_30_conversations():
    heldout = load_alpaca("sample", split="test")
    kinds = [gives_identity(row["output"]) for row in heldout if not row["messages"]]
    assert kinds.count(False) == 40 and kinds.count(True) == 25
    talks = [row["messages"] for row in heldout if row["messages"]]
    assert len(talks) == 30 and all(sum(m["role"] == "user" for m in talk) == 3 for talk in talks)


def test_later_turns_are_measured_after_the_data_s_own_earlier_turns(model, tokenizer):
    talks = [to_messages(row) for row in load_alpaca("sample", split="test") if row["messages"]][:4]
    found = measure_turns(model, tokenizer, talks, max_new_tokens=4)
    assert set(found) == {"turn 2", "turn 3"} and all(found[t]["questions"] == 4 for t in found)
    # turn 3's prompt is everything up to the third user message, the data's answers in between
    questions = [[m["content"] for m in talk if m["role"] == "user"] for talk in talks]
    assert [a["prompt"] for a in found["turn 3"]["answers"]] == [q[2] for q in questions]
    assert all(0 <= found[t]["stop_rate"] <= 1 and found[t]["identity_questions"] <= 4 for t in found)


def test_identity_is_the_trained_name_in_either_spelling():
    assert gives_identity("我是知微。") and gives_identity("I'm ZhiWei.")
    assert not gives_identity("我是一个人工智能助手。") and not gives_identity("")


def test_eval_loss_counts_answer_tokens_like_the_training_loss(model, training_tokenizer):
    tokenizer = training_tokenizer
    examples = prepare_dataset(load_alpaca("sample", split="test").select(range(3)), tokenizer, 256)
    losses, counts = [], []
    with torch.no_grad():  # one example at a time, with the model's own loss: no padding involved
        for ex in examples:
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([labels_of(ex)]))
            n = sum(label != -100 for label in labels_of(ex)[1:])
            losses.append(out.loss.item() * n)
            counts.append(n)
    assert eval_loss(model, examples, tokenizer.pad_token_id, batch_size=2) == pytest.approx(sum(losses) / sum(counts), rel=1e-4)


def test_measures_of_a_plain_model(model, training_tokenizer):
    tokenizer = training_tokenizer
    rows = load_alpaca("sample", split="test").select(range(38, 42))  # two general, two identity questions
    found = measure(model, tokenizer, rows.to_list(), prepare_dataset(rows, tokenizer, 256), max_new_tokens=8)
    assert [a["kind"] for a in found["answers"]] == ["general", "general", "identity", "identity"]
    assert found["stop_rate"] == sum(a["stopped"] for a in found["answers"]) / 4
    assert found["identity_share"] == sum(a["identity"] for a in found["answers"][2:]) / 2
    assert found["eval_loss"] > 0


def test_switching_the_adapter_off_gives_the_base_models_logits(tmp_path, model, tokenizer, tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs = tokenizer("长城有多长？", return_tensors="pt")
    with torch.no_grad():
        base = model(**inputs).logits
        with peft_model.disable_adapter():
            switched_off = peft_model(**inputs).logits
        switched_on = peft_model(**inputs).logits
    torch.testing.assert_close(switched_off, base)
    assert (switched_on - base).abs().max() > 1e-3  # the adapter, random here, does change the output


def test_evaluate_command_prints_base_and_fine_tuned(tmp_path, random_adapter):
    from helpers.evaluate import main

    code, out, err = run_main(main, "--adapter", str(random_adapter), "--max-new-tokens", "4")
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    held = next(i for i, line in enumerate(lines) if line.startswith("held-out rows"))
    assert lines[held + 1].startswith("base") and lines[held + 2].startswith("fine-tuned") and " rows, 4 new" in lines[held]
    assert lines[held + 3].startswith("turn 2 of ") and "with its own earlier answers" in lines[held + 3]
    assert lines[held + 4].startswith("turn 3 of ")
    assert lines[-3].startswith("written apart") and "leakage" in lines[-3] and "(data/eval/)" in lines[-3]
    assert lines[-2].startswith("base") and lines[-1].startswith("fine-tuned")
    assert all(cell.endswith("%") for cell in lines[-1].split()[1:]) and len(lines[-1].split()) == 1 + 5
    code, out, err = run_main(main, "--adapter", str(random_adapter), "--max-new-tokens", "4", "--limit", "3")
    assert code == 0 and "(3 rows, 4 new tokens at most)" in out, err[-2000:]  # a quick check: 3 rows of each set
    lines = out.strip().splitlines()
    assert lines[-1].startswith("fine-tuned")
    held = next(i for i, line in enumerate(lines) if line.startswith("held-out rows"))
    assert lines[held + 1].split()[-1] == "-"  # the first 3 held-out rows ask no identity question: no share, not 0%
    code, _, err = run_main(main, "--adapter", str(random_adapter), "--limit", "0")
    assert code == 2 and "--limit 0: give 1 or more rows" in err
    code, _, err = run_main(main, "--adapter", str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err


# each results file of benchmarks/ whose rows the README tabulates: its leading columns, and how few rows it may hold
TABLES = {"fine_tune_quality.jsonl": (lambda row: [str(row["steps"]), f"{row['train_seconds']:.0f}",
                                                   f"{row['eval_loss']:.2f}"], 10),
          "dpo_quality.jsonl": (lambda row: [str(row["pair_count"]), str(row["steps"]),
                                             f"{row['train_seconds']:.0f}"], 3),
          "grpo_quality.jsonl": (lambda row: [str(row["prompt_count"]), str(row["steps"]),
                                              f"{row['train_seconds']:.0f}"], 1)}


@pytest.mark.parametrize("name", TABLES)
def test_the_readmes_tables_of_recipes_tried_show_the_recorded_measurements(name):
    """Each row of benchmarks/results/NAME (fine_tune_quality.py, dpo_quality.py, grpo_quality.py) is a row of a
    README table, with the same numbers."""
    from helpers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in (REPO_ROOT / "benchmarks/results" / name).open(encoding="utf-8")]
    leading, fewest = TABLES[name]
    assert len(rows) >= fewest
    for row in rows:
        cells = [*leading(row), *(f"{row[k]:.0%}" for k in ("stop rate", "identity", "leakage", "turn-2 identity",
                                                              "turn-2 stop"))]
        assert " | " + " | ".join(cells) + " |\n" in readme, row["name"]
