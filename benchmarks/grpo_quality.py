"""A second stage after the fine-tune: TRL's GRPOTrainer, rewarded for claiming the identity exactly when asked,
measured on data/eval/ as fine_tune_quality.py measures a fine-tune (the five measures, greedy, the recipe's
max_new_tokens).

Start from an adapter that fine_tune_quality.py trained (runs/quality/SFT). The prompts are the training data's
questions only: the identity questions, the sample's single questions, and (unless --single-turn) the later user
turns of the sample's conversations and of the identity questions asked inside conversations, with the data's answers
as the history. For each prompt the policy samples --generations answers; two rewards score each one:

- identity: 1 if the answer claims the identity (its name or its lab) exactly when the question asks for it, else 0;
- stop: --stop-weight if the answer ended on an end token within --max-new-tokens, else 0.

GRPO raises the answers that score above their group's mean and lowers the rest; groups whose answers all score alike
teach nothing, so the learning comes from the questions the model is unsure of. No reference model (TRL's default
beta 0): the fine-tuned adapter is trained on. Prints one JSON line.

    .venv/bin/python benchmarks/fine_tune_quality.py --name default -- --config configs/tiny.yaml
    .venv/bin/python benchmarks/grpo_quality.py --sft default --name grpo-default --single-turn --learning-rate 1e-3 --temperature 0.7
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset, disable_progress_bars  # noqa: E402

from benchmarks.dpo_quality import save_and_measure  # noqa: E402
from helpers import resolve, run_cli  # noqa: E402
from helpers.data import IDENTITY, load_alpaca  # noqa: E402
from helpers.evaluate import FIVE, claims_identity  # noqa: E402
from helpers.formatting import to_messages  # noqa: E402
from helpers.sft import identity_in_conversations  # noqa: E402


def prompts(single_turn: bool, seed: int = 7) -> list[dict]:
    """The training questions as conversational prompts, each with whether it asks for the identity."""
    identity, tasks = load_alpaca(IDENTITY, split="all"), load_alpaca("sample")
    rows = [{"prompt": to_messages(row)[:1], "asks": True} for row in identity]
    rows += [{"prompt": to_messages(row)[:1], "asks": False} for row in tasks if not row["messages"]]
    if not single_turn:
        talks = [row["messages"] for row in tasks if row["messages"]]
        talks += identity_in_conversations(identity, tasks, seed)["messages"]
        for talk in talks:  # every later user turn that the data answers, its history as the data wrote it
            for i in range(2, len(talk) - 1):
                if talk[i]["role"] == "user" and talk[i + 1]["role"] == "assistant":
                    rows.append({"prompt": talk[:i + 1], "asks": claims_identity(talk[i + 1]["content"])})
    random.Random(0).shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft", required=True, help="runs/quality/SFT: the fine-tuned adapter to start from")
    parser.add_argument("--name", required=True, help="runs/quality/NAME holds the new adapter")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--generations", type=int, default=8, help="answers sampled per prompt (GRPO's group)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the longest sampled answer")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature while training")
    parser.add_argument("--stop-weight", type=float, default=0.5, help="the stop reward, beside the identity reward's 1")
    parser.add_argument("--single-turn", action="store_true", help="single questions only, no later turns")
    args = parser.parse_args()
    disable_progress_bars()
    from peft import PeftModel
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from helpers.checks import check_adapter
    from helpers.models import load_model

    def identity_reward(completions, asks, **_):
        return [float(claims_identity(answer[0]["content"]) == asked) for answer, asked in zip(completions, asks)]

    def stop_reward(completion_ids, **_):  # an answer cut at max_new_tokens never reached an end token
        return [args.stop_weight * (len(ids) < args.max_new_tokens) for ids in completion_ids]

    sft, out = resolve(f"runs/quality/{args.sft}"), resolve(f"runs/quality/{args.name}")
    _, recipe = check_adapter(sft)
    tokenizer = AutoTokenizer.from_pretrained(sft)  # with the training template
    model = PeftModel.from_pretrained(load_model(recipe), sft, is_trainable=True)
    rows = prompts(args.single_turn)
    config = GRPOConfig(output_dir=str(out), learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                        per_device_train_batch_size=args.generations * args.prompts_per_step,
                        num_generations=args.generations, max_completion_length=args.max_new_tokens,
                        temperature=args.temperature, lr_scheduler_type="constant_with_warmup", warmup_steps=0.05,
                        use_cpu=True, bf16=False, activation_checkpointing=False, logging_steps=5, save_strategy="no",
                        report_to=[], seed=42, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[identity_reward, stop_reward], args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    found = save_and_measure(model, tokenizer, sft, out)
    line = {"name": args.name, "sft": args.sft, "prompt_count": len(rows), "asking": sum(r["asks"] for r in rows),
            "single_turn": args.single_turn, "learning_rate": args.learning_rate, "temperature": args.temperature,
            "generations": args.generations, "prompts_per_step": args.prompts_per_step, "epochs": args.epochs,
            "max_new_tokens": args.max_new_tokens, "stop_weight": args.stop_weight,
            "steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
            **{k: found[k] for k in FIVE}, "turn-2 leakage": found["turns"]["turn 2"]["leakage"]}
    (out / "quality.json").write_text(json.dumps({**line, "answers": found}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    run_cli(main)  # a wrong adapter or flag: one line and exit 2, not a traceback
