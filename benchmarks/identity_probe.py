"""Can the model tell an identity question from another task before it writes a word? A linear probe says.

The probe is a logistic regression on one vector per question: the last layer's hidden state at the position where
the answer's first token is chosen (what the LM head reads). It is fit on the training prompts only (the identity
questions of data/identity_zh.json against the sample's single questions) and scored on the evaluation sets written
apart from the data (data/eval/: identity questions against general tasks). The score is the ranking's AUC, its d'
(sqrt(2) * inverse-normal(AUC), the same scale as the README's d' of identity share against leakage), and the share of
identity questions found at the threshold where 5% of the general tasks are taken for identity questions. The base
(adapter switched off) and the fine-tuned model are probed alike. If the probe separates the sets much better than
the greedy answers do, the model holds the distinction and the fine-tune does not turn it into the first words.
Where the adapter holds fine_tune_quality.py's quality.json (its greedy answers to data/eval/), the line also says how
many general tasks it answered with the identity, and how many of those the fine-tuned probe put above its threshold.
Prints one JSON line.

    .venv/bin/python benchmarks/identity_probe.py --adapter runs/quality/default
    .venv/bin/python benchmarks/identity_probe.py --adapter outputs/lora-tiny --limit 20   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from helpers import run_cli  # noqa: E402
from helpers.chat import load_adapter  # noqa: E402
from helpers.data import IDENTITY, load_alpaca  # noqa: E402
from helpers.evaluate import load_eval_sets  # noqa: E402
from helpers.formatting import to_messages  # noqa: E402

FALSE_ALARMS = 0.05  # the share of general tasks the threshold lets through


def answer_states(model, tokenizer, prompts) -> torch.Tensor:
    """The last layer's hidden state where each prompt's answer begins, one row per prompt."""
    rows = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1])
    return torch.stack(rows)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression with an L2 penalty, both classes weighted alike: weights and bias."""
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500)
    positive_weight = torch.tensor((y == 0).sum().item() / (y == 1).sum().item())

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=positive_weight)
        loss = loss + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def threshold_at(general: list[float]) -> float:
    """The score that FALSE_ALARMS of the general tasks exceed."""
    return sorted(general)[min(len(general) - 1, math.ceil((1 - FALSE_ALARMS) * len(general)) - 1)]


def separation(identity: list[float], general: list[float]) -> dict:
    """AUC of the scores, its d', and the identity questions found at FALSE_ALARMS of the general tasks."""
    auc = sum((i > g) + 0.5 * (i == g) for i in identity for g in general) / (len(identity) * len(general))
    d_prime = math.sqrt(2) * NormalDist().inv_cdf(min(max(auc, 1e-4), 1 - 1e-4))  # AUC = Phi(d' / sqrt 2)
    threshold = threshold_at(general)
    return {"auc": round(auc, 3), "d_prime": round(d_prime, 2),
            "found_at_5pct": round(sum(i > threshold for i in identity) / len(identity), 3)}


def probe(model, tokenizer, train, test, l2) -> tuple[list[float], list[float]]:
    """Fit on ``train`` (identity prompts, other prompts); the scores of ``test``'s identity and general prompts."""
    x = {name: [answer_states(model, tokenizer, prompts) for prompts in pair]
         for name, pair in (("train", train), ("test", test))}
    states = torch.cat(x["train"])
    mean, std = states.mean(0), states.std(0) + 1e-6
    labels = torch.cat([torch.ones(len(train[0])), torch.zeros(len(train[1]))])
    w, b = fit_probe((states - mean) / std, labels, l2)
    identity, general = (((states - mean) / std @ w + b).tolist() for states in x["test"])
    return identity, general


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a LoRA adapter directory (its base is probed too)")
    parser.add_argument("--l2", type=float, default=0.01, help="the probe's L2 penalty")
    parser.add_argument("--limit", type=int, help="only the first N prompts of each set, for a quick check")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 2:
        parser.error("--limit must be at least 2: the probe needs two of each kind")
    torch.manual_seed(0)
    model, tokenizer, _ = load_adapter(args.adapter)
    question = lambda row: to_messages(row)[0]["content"]  # noqa: E731
    train = ([question(r) for r in load_alpaca(IDENTITY, split="all")][:args.limit],
             [question(r) for r in load_alpaca("sample") if not r["messages"]][:args.limit])
    sets = load_eval_sets()
    test = ([r["prompt"] for r in sets["identity"]][:args.limit], [r["prompt"] for r in sets["general"]][:args.limit])
    line = {"adapter": args.adapter, "l2": args.l2, "train": [len(p) for p in train], "test": [len(p) for p in test]}
    scores = {}
    for name, switch in (("base", model.disable_adapter), ("fine-tuned", contextlib.nullcontext)):
        with switch():
            scores[name] = probe(model, tokenizer, train, test, args.l2)
        line[name] = separation(*scores[name])
    answers = Path(args.adapter) / "quality.json"
    if answers.is_file():  # the fine-tuned model's greedy answers: which general tasks it answered with the identity
        found = json.loads(answers.read_text(encoding="utf-8"))["answers"]["prompts"]["answers"]
        claimed = {a["prompt"]: a["claims"] for a in found}
        general = scores["fine-tuned"][1]
        leaked = [score for prompt, score in zip(test[1], general) if claimed.get(prompt)]
        line["leaked"] = len(leaked)
        threshold = threshold_at(general)
        line["leaked_above_threshold"] = sum(score > threshold for score in leaked)
    print(json.dumps(line))


if __name__ == "__main__":
    run_cli(main)  # a wrong adapter or flag: one line and exit 2, not a traceback
