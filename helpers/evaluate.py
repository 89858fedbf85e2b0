"""Before/after measures of a fine-tune on the held-out rows: eval loss, stop rate, identity share.

Taught in notebook 05. The same model answers twice: with the LoRA adapter switched off (the base
model, through PEFT's ``disable_adapter()``, so a 9B is never loaded twice) and with it on.

- **eval loss**: mean cross-entropy per answer token (the end token included) on the held-out rows,
  the same tokens the training loss counts;
- **stop rate**: the share of greedy answers that end on one of GLM-4's end ids within
  ``max_new_tokens``, rather than running on until cut off (answered 16 at a time, left-padded:
  the same answers as one by one, several times faster);
- **identity share**: of the held-out identity questions (new wordings never trained on), the share
  of answers that give the trained name, 知微 (or its spelling ZhiWei).

    python -m helpers.evaluate --adapter outputs/lora-tiny     # prints the table, writes nothing
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import dataclass, field

from helpers import run_cli

IDENTITY_NAMES = ("知微", "ZhiWei")  # the trained identity, as data/identity_zh.json gives it
HELDOUT = "sample"  # load_alpaca("sample", split="test"): data/heldout_zh.json


def gives_identity(answer: str) -> bool:
    """Whether an answer names the trained identity."""
    return any(name in answer for name in IDENTITY_NAMES)


def heldout_rows(data: str = HELDOUT) -> list[dict]:
    """The held-out rows, each with ``kind``: "identity" when its reference answer gives the identity."""
    from helpers.data import load_alpaca

    rows = load_alpaca(data, split="test").to_list()
    return [{**row, "kind": "identity" if gives_identity(row["output"]) else "general"} for row in rows]


def adapter_switch(model, enabled: bool):
    """A context in which ``model`` answers with its LoRA adapter on (``enabled``) or off (the base)."""
    if enabled or not hasattr(model, "disable_adapter"):
        return nullcontext()
    return model.disable_adapter()


def eval_loss(model, tokenizer, rows, max_length: int, batch_size: int = 4) -> float:
    """Mean cross-entropy per trained token (answer + end token) of ``rows``, as the SFT loss counts it."""
    import torch

    from helpers.formatting import IGNORE_INDEX, prepare

    prepared, _ = prepare(rows, tokenizer, max_length, verbose=False)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prepared), batch_size):
            batch = prepared[start:start + batch_size]
            width = max(len(ids) for ids in batch["input_ids"])
            pad = tokenizer.pad_token_id
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch["input_ids"]], device=model.device)
            labels = torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for y in batch["labels"]], device=model.device)
            mask = (torch.arange(width, device=model.device)[None, :]
                    < torch.tensor([len(x) for x in batch["input_ids"]], device=model.device)[:, None]).long()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shifted = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted,
                                                       ignore_index=IGNORE_INDEX, reduction="sum")
            total += losses.item()
            count += int((shifted != IGNORE_INDEX).sum())
    return total / count


@dataclass
class Measures:
    """One model's answers to the held-out rows and what they add up to."""

    name: str
    eval_loss: float
    answers: list = field(default_factory=list)  # {"prompt", "kind", "answer", "stopped", "identity"}

    def rate(self, key: str, kind: str | None = None) -> float:
        chosen = [a for a in self.answers if kind is None or a["kind"] == kind]
        return sum(bool(a[key]) for a in chosen) / len(chosen) if chosen else float("nan")

    @property
    def stop_rate(self) -> float:
        return self.rate("stopped")

    @property
    def identity_share(self) -> float:
        return self.rate("identity", "identity")

    def summary(self) -> dict:
        return {"eval_loss": round(self.eval_loss, 4), "stop_rate": round(self.stop_rate, 4),
                "stop_rate_general": round(self.rate("stopped", "general"), 4),
                "stop_rate_identity": round(self.rate("stopped", "identity"), 4),
                "identity_share": round(self.identity_share, 4), "answers": len(self.answers)}


def measure(model, tokenizer, rows, max_length: int, max_new_tokens: int, adapter: bool = True,
            name: str | None = None) -> Measures:
    """Eval loss and greedy answers to every row, with the adapter on (``adapter``) or off (the base)."""
    from helpers.chat import reply_batch
    from helpers.formatting import user_content

    prompts = [user_content(row["instruction"], row.get("input", "")) for row in rows]
    with adapter_switch(model, adapter):
        loss = eval_loss(model, tokenizer, rows, max_length)
        replies = reply_batch(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens)
    answers = [{"prompt": prompt, "kind": row["kind"], "answer": answer, "stopped": stopped,
                "identity": gives_identity(answer)} for prompt, row, (answer, stopped) in zip(prompts, rows, replies)]
    return Measures(name or ("fine-tuned" if adapter else "base"), loss, answers)


def compare(model, tokenizer, rows, max_length: int, max_new_tokens: int) -> dict[str, Measures]:
    """The base model (adapter off) and the fine-tuned model (adapter on), measured on the same rows."""
    return {m.name: m for m in (measure(model, tokenizer, rows, max_length, max_new_tokens, adapter=False),
                                measure(model, tokenizer, rows, max_length, max_new_tokens, adapter=True))}


def main(argv=None) -> int:
    from helpers.chat import load_chat_model
    from helpers.train import run_record

    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a LoRA adapter directory from helpers.train or notebook 04")
    parser.add_argument("--data", default=HELDOUT, help="the data whose test split is measured (default: sample)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the adapter profile's")
    args = parser.parse_args(argv)
    model, tokenizer = load_chat_model(adapter=args.adapter)
    trained = run_record(args.adapter).get("profile") or {}  # an adapter made outside the course has none
    max_new_tokens = args.max_new_tokens or trained.get("max_new_tokens", 256)
    results = compare(model, tokenizer, heldout_rows(args.data), trained.get("max_length", 512), max_new_tokens)
    print(f"{'':<12}{'eval loss':>10}{'stop rate':>11}{'identity':>10}   ({max_new_tokens} new tokens at most)")
    for m in results.values():
        print(f"{m.name:<12}{m.eval_loss:>10.3f}{m.stop_rate:>11.0%}{m.identity_share:>10.0%}")
    return 0


if __name__ == "__main__":
    run_cli(main)
