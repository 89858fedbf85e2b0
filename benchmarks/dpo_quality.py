"""A second stage after the fine-tune: TRL's DPOTrainer on preference pairs, measured on data/eval/ as
fine_tune_quality.py measures a fine-tune (the five measures, greedy, the recipe's max_new_tokens).

Start from an adapter that fine_tune_quality.py trained (runs/quality/SFT). The pairs are built from the training data
and from the adapter's own greedy answers, so that the rejected answer is, where it can be, what the model really says:

- general: a single question of the sample -> its answer, over an identity answer (the model's own, if it claimed
  the identity there);
- identity: an identity question -> its answer, over the model's own answer when that misses the name, else over an
  answer to another task;
- turns: every later answer of the sample's conversations, with the model's own earlier answers as the history;
- asked-later: each identity question asked after a task, the model's own answer to the task in between;
- fresh: the questions of the experiment files (contrast, hard negatives, more identity), which the fine-tune never
  saw, where the model's own answer is wrong: claims the identity on a task, or misses it on an identity question;
- more: the same for the general tasks of general_more_zh.json (written last, apart from the others).

The reference model is the fine-tuned adapter itself (TRL copies it into a frozen "ref" adapter). Prints one JSON line.

    .venv/bin/python benchmarks/fine_tune_quality.py --name default -- --config configs/tiny.yaml
    .venv/bin/python benchmarks/dpo_quality.py --sft default --name dpo-default
    .venv/bin/python benchmarks/dpo_quality.py --sft default --name dpo-all --pairs general,identity,turns,asked-later,fresh
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset, disable_progress_bars  # noqa: E402

from helpers import resolve, run_cli  # noqa: E402
from helpers.data import IDENTITY, load_alpaca, read_rows  # noqa: E402
from helpers.evaluate import FIVE, claims_identity, independent_measures, reply_batch  # noqa: E402
from helpers.formatting import to_messages  # noqa: E402

# pair kinds from files the fine-tune never saw, each file's side: its questions ask for the identity or not
UNSEEN = {"fresh": {"general": ("data/contrast_zh.json", "data/hard_negatives_zh.json"),
                    "identity": ("data/identity_more_zh.json", "data/identity_varied_zh.json")},
          "more": {"general": ("data/general_more_zh.json",)}}  # the general tasks written last, apart from the rest
KINDS = ("general", "identity", "turns", "asked-later", "fresh", "more")


def own_answers(model, tokenizer, conversations, new_tokens=96):
    model.eval()
    answers = [answer for answer, _ in reply_batch(model, tokenizer, conversations, new_tokens)]
    model.train()
    return answers


def own_histories(model, tokenizer, talks):
    """Each conversation's user turns with the model's own answers between them, turn by turn."""
    users = [[m for m in talk if m["role"] == "user"] for talk in talks]
    histories = [[] for _ in talks]
    for n in range(max(len(u) for u in users)):
        active = [i for i, u in enumerate(users) if len(u) > n]
        for i in active:
            histories[i].append({"role": "user", "content": users[i][n]["content"]})
        for i, answer in zip(active, own_answers(model, tokenizer, [histories[i] for i in active])):
            histories[i].append({"role": "assistant", "content": answer})
    return histories


def pair(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def build_pairs(model, tokenizer, kinds, seed=0) -> list[dict]:
    rng = random.Random(seed)
    rows = load_alpaca("sample").to_list()
    tasks = [r for r in rows if not r["messages"]]
    identity = load_alpaca(IDENTITY, split="all").to_list()
    asked = lambda row: [to_messages(row)[0]]  # noqa: E731
    pairs = []
    if "general" in kinds:
        for row, answer in zip(tasks, own_answers(model, tokenizer, [asked(r) for r in tasks])):
            bad = answer if claims_identity(answer) else rng.choice(identity)["output"]
            pairs.append(pair(asked(row), row["output"], bad))
    if "identity" in kinds:
        for row, answer in zip(identity, own_answers(model, tokenizer, [asked(r) for r in identity])):
            bad = answer if not claims_identity(answer) else rng.choice(tasks)["output"]
            pairs.append(pair(asked(row), row["output"], bad))
    if "turns" in kinds:
        talks = [[m for m in to_messages(r) if m["role"] in ("user", "assistant")] for r in rows if r["messages"]]
        for talk, own in zip(talks, own_histories(model, tokenizer, talks)):
            for i, message in enumerate(talk):
                if message["role"] != "assistant" or i < 2:
                    continue
                if claims_identity(message["content"]):  # asked who it is at a later turn
                    bad = own[i]["content"] if not claims_identity(own[i]["content"]) else rng.choice(tasks)["output"]
                else:
                    bad = own[i]["content"] if claims_identity(own[i]["content"]) else rng.choice(identity)["output"]
                pairs.append(pair(own[:i], message["content"], bad))
    if "asked-later" in kinds:
        firsts = [rng.choice(tasks) for _ in identity]
        histories = [[*asked(task), {"role": "assistant", "content": answer}, *asked(row)] for task, answer, row in
                     zip(firsts, own_answers(model, tokenizer, [asked(t) for t in firsts]), identity)]
        for history, answer, row in zip(histories, own_answers(model, tokenizer, histories), identity):
            bad = answer if not claims_identity(answer) else rng.choice(tasks)["output"]
            pairs.append(pair(history, row["output"], bad))
    for kind, sides in UNSEEN.items():  # only where the model is wrong on questions it never trained on
        if kind not in kinds:
            continue
        for side, files in sides.items():
            unseen = [r for name in files for r in read_rows(name)]
            for row, answer in zip(unseen, own_answers(model, tokenizer, [asked(r) for r in unseen])):
                if claims_identity(answer) != (side == "identity"):
                    pairs.append(pair(asked(row), row["output"], answer))
    rng.shuffle(pairs)
    return pairs


def save_and_measure(model, tokenizer, sft: Path, out: Path) -> dict:
    """Save a second stage's adapter as training saves one (with its tokenizer, and the recipe of the adapter it
    started from: the same base, loaded the same way), load it back as the course loads adapters, measure data/eval/."""
    from helpers.chat import load_adapter

    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(sft / "recipe.yaml", out / "recipe.yaml")
    model, tokenizer, recipe = load_adapter(out)
    return independent_measures(model, tokenizer, recipe["max_new_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft", required=True, help="runs/quality/SFT: the fine-tuned adapter to start from")
    parser.add_argument("--name", required=True, help="runs/quality/NAME holds the new adapter")
    parser.add_argument("--pairs", default="general,identity", help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--sft-weight", type=float, default=0.0, help="add TRL's 'sft' loss on the chosen answers")
    parser.add_argument("--loss-type", default="sigmoid", help="TRL's DPO loss: sigmoid (DPO's own), ipo, apo_zero, "
                        "nca_pair (the last two also raise the chosen answers' own likelihood)")
    args = parser.parse_args()
    kinds = args.pairs.split(",")
    if set(kinds) - set(KINDS):
        parser.error(f"unknown pairs {sorted(set(kinds) - set(KINDS))}: choose from {', '.join(KINDS)}")
    disable_progress_bars()
    from peft import PeftModel
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from helpers.checks import check_adapter
    from helpers.models import load_model

    sft, out = resolve(f"runs/quality/{args.sft}"), resolve(f"runs/quality/{args.name}")
    _, recipe = check_adapter(sft)
    tokenizer = AutoTokenizer.from_pretrained(sft)  # with the training template: the answer and its end token
    model = PeftModel.from_pretrained(load_model(recipe), sft, is_trainable=True)
    start = time.perf_counter()
    pairs = build_pairs(model, tokenizer, kinds)
    built = time.perf_counter() - start
    losses = [args.loss_type, *(["sft"] if args.sft_weight else [])]
    config = DPOConfig(output_dir=str(out), learning_rate=args.learning_rate, beta=args.beta,
                       num_train_epochs=args.epochs, per_device_train_batch_size=8, lr_scheduler_type="cosine",
                       warmup_steps=0.05, max_length=recipe["max_length"], use_cpu=True, bf16=False, logging_steps=10,
                       save_strategy="no", report_to=[], seed=42, loss_type=losses,
                       loss_weights=[1.0, *([args.sft_weight] if args.sft_weight else [])], disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.delete_adapter("ref")  # the frozen copy TRL made of the starting adapter
    found = save_and_measure(model, tokenizer, sft, out)
    line = {"name": args.name, "sft": args.sft, "pairs": kinds, "pair_count": len(pairs),
            "learning_rate": args.learning_rate, "beta": args.beta,
            **({"loss_type": args.loss_type} if args.loss_type != "sigmoid" else {}), "epochs": args.epochs, "sft_weight": args.sft_weight,
            "steps": trainer.state.global_step, "pairs_seconds": round(built, 1), "train_seconds": round(seconds, 1),
            **{k: found[k] for k in FIVE}, "turn-2 leakage": found["turns"]["turn 2"]["leakage"]}
    (out / "quality.json").write_text(json.dumps({**line, "answers": found}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    run_cli(main)  # a wrong adapter or flag: one line and exit 2, not a traceback
