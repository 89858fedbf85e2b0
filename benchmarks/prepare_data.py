"""How fast the course prepares the full Alpaca-GPT4-zh data, against the original per-example recipe.

Builds a synthetic file of 42,677 rows shaped like the real data (about 230 characters per example,
40% of rows with an input), then prepares it in one run:

- ours: notebook 03's ``prepare_dataset``: every row as a conversation, tokenized once, 256 at a time, by GLM-4's
  training chat template, which also gives the mask of the trained tokens (its ``{% generation %}`` blocks, what
  TRL's ``assistant_only_loss`` uses); over-long rows dropped. TRL then turns the mask into labels;
- per-example: what a ``formatting_func`` recipe does, one row at a time: render the chat to text, then tokenize
  the text (which also doubles the ``[gMASK]<sop>`` prefix and builds no labels; here only speed is measured).

With ``--all``, two more for comparison: ``by_hand`` (``build_example`` in a ``Dataset.map``: three renders a row, the
labels built by hand, as notebook 03 explains them) and ``trl_raw`` (``SFTTrainer`` given the raw ``messages`` rows
and ``assistant_only_loss=True``: TRL tokenizes, builds the labels and truncates by itself).

Prints one JSON line: rows/s for each (the best of ``--repeat`` runs) and the ratio of ours to per-example.

    .venv/bin/python benchmarks/prepare_data.py                       # tiny tokenizer, offline
    .venv/bin/python benchmarks/prepare_data.py --all                 # and the two other ways
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
from helpers.families import GLM4  # noqa: E402
from helpers.formatting import build_example, prepare_dataset, to_conversation, to_messages  # noqa: E402


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


def trl_raw(dataset, model: str, max_length: int) -> int:
    """SFTTrainer's own preparation of raw messages rows with assistant_only_loss=True: the rows it keeps."""
    from trl import SFTConfig, SFTTrainer

    conversations = dataset.map(to_conversation, remove_columns=dataset.column_names)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, use_cpu=True, bf16=False, report_to="none", assistant_only_loss=True,
                         chat_template_path=str(GLM4.training_template), max_length=max_length)
        return len(SFTTrainer(model=model, args=args, train_dataset=conversations,
                              processing_class=AutoTokenizer.from_pretrained(model)).train_dataset)


def timed(function, *args, repeat=1):
    """The result and the best time of ``repeat`` runs: the machine's other work only ever adds time."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return result, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="weights/tiny-glm4", help="a model directory with a GLM-4 tokenizer")
    parser.add_argument("--rows", type=int, default=42_677)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best time counts")
    parser.add_argument("--all", action="store_true", help="also time build_example by hand and TRL on raw rows")
    args = parser.parse_args()

    disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
    training_tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
    training_tokenizer.chat_template = GLM4.training_template.read_text(encoding="utf-8")
    rows = synthetic_rows(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.json"
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        dataset = load_alpaca(str(path), split="all")

    prepared, ours = timed(prepare_dataset, dataset, training_tokenizer, args.max_length, repeat=args.repeat)
    _, baseline = timed(per_example, rows, tokenizer, repeat=args.repeat)
    chars = sum(len(r["instruction"]) + len(r["input"]) + len(r["output"]) for r in rows) / len(rows)
    line = {"benchmark": "prepare_data", "model": args.model, "rows": len(rows), "chars_per_example": round(chars, 1),
            "max_length": args.max_length, "kept": len(prepared),
            "ours_rows_per_s": round(len(rows) / ours), "per_example_rows_per_s": round(len(rows) / baseline),
            "ratio": round(baseline / ours, 2), "ours_s": round(ours, 2), "per_example_s": round(baseline, 2),
            "repeat": args.repeat}
    if args.all:
        _, by_hand = timed(lambda: dataset.map(build_example, fn_kwargs={"tokenizer": tokenizer},
                                               remove_columns=dataset.column_names))
        _, trl = timed(trl_raw, dataset, str(resolve(args.model)), args.max_length)
        line.update({"by_hand_rows_per_s": round(len(rows) / by_hand), "by_hand_s": round(by_hand, 2),
                     "trl_raw_rows_per_s": round(len(rows) / trl), "trl_raw_s": round(trl, 2)})
    print(json.dumps(line))


if __name__ == "__main__":
    main()
