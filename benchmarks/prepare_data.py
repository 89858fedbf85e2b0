"""How fast the course prepares the full Alpaca-GPT4-zh data, against the original per-example recipe.

Builds a synthetic file of 42,677 rows shaped like the real data (about 230 characters per example,
40% of rows with an input), then prepares it twice in one run:

- ours: notebook 03's ``prepare_dataset`` (``Dataset.map`` of ``build_example``: the prompt and the
  whole conversation tokenized by the chat template, labels built, over-long rows dropped);
- per-example: what a ``formatting_func`` recipe does, one row at a time: render the chat to text,
  then tokenize the text (which also doubles the ``[gMASK]<sop>`` prefix and builds no labels; here
  only speed is measured).

Prints one JSON line: rows/s for both and their ratio.

    .venv/bin/python benchmarks/prepare_data.py                       # tiny tokenizer, offline
    .venv/bin/python benchmarks/prepare_data.py --model weights/glm-4-9b-hf --rows 42677
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import disable_progress_bars  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from helpers import resolve  # noqa: E402
from helpers.data import load_alpaca, read_rows  # noqa: E402
from helpers.formatting import prepare_dataset, to_messages  # noqa: E402


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Rows cut from the course's own Chinese text to the real data's lengths."""
    rng = random.Random(seed)
    text = "".join(r["output"] for r in read_rows("data/alpaca_zh_sample.json"))
    text += resolve("data/corpus_zh.txt").read_text(encoding="utf-8").replace("\n", "")

    def piece(mean: int) -> str:
        size = max(4, int(rng.gauss(mean, mean / 3)))
        start = rng.randrange(len(text) - size)
        return text[start:start + size]

    return [{"instruction": piece(25), "input": piece(60) if rng.random() < 0.4 else "", "output": piece(180)}
            for _ in range(n)]


def per_example(rows: list[dict], tokenizer) -> list[list[int]]:
    out = []
    for row in rows:
        text = tokenizer.apply_chat_template(to_messages(row), tokenize=False)
        out.append(tokenizer(text)["input_ids"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="weights/tiny-glm4", help="a model directory with a GLM-4 tokenizer")
    parser.add_argument("--rows", type=int, default=42_677)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
    rows = synthetic_rows(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.json"
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        dataset = load_alpaca(str(path), split="all", identity=False)

    start = time.perf_counter()
    prepared = prepare_dataset(dataset, tokenizer, args.max_length)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    per_example(rows, tokenizer)
    baseline = time.perf_counter() - start

    chars = sum(len(r["instruction"]) + len(r["input"]) + len(r["output"]) for r in rows) / len(rows)
    print(json.dumps({
        "benchmark": "prepare_data", "model": args.model, "rows": len(rows),
        "chars_per_example": round(chars, 1), "max_length": args.max_length, "kept": len(prepared),
        "ours_rows_per_s": round(len(rows) / ours), "per_example_rows_per_s": round(len(rows) / baseline),
        "ratio": round(baseline / ours, 2), "ours_s": round(ours, 2), "per_example_s": round(baseline, 2),
    }))


if __name__ == "__main__":
    main()
