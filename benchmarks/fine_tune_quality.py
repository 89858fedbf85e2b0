"""What a fine-tune of the tiny model really learned, for one recipe: train it, then measure it on the evaluation sets
written apart from its training data (data/eval/), as an outsider would.

The recipe is the training command's own flags (after ``--``); the data can be varied too, for the table in the
README's "what the fine-tune learned" section: ``--train-files`` replaces the sample's training files, and
``--identity-files`` the identity rows joined to them. Prints one JSON line: the settings, steps and time, the
held-out eval loss, and the five measures (stop rate, identity share, leakage, and turn-2 identity share and stop
rate with the model's own earlier answers) with the held-out measures beside them. Timings are one run's.

    .venv/bin/python benchmarks/fine_tune_quality.py --name default -- --config configs/tiny.yaml
    .venv/bin/python benchmarks/fine_tune_quality.py --name half-identity -- --config configs/tiny.yaml --identity_share 0.13
    .venv/bin/python benchmarks/fine_tune_quality.py --name base --base      # the base model, untrained
    .venv/bin/python benchmarks/fine_tune_quality.py --name default --measure-only   # measure runs/quality/default again
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import disable_progress_bars  # noqa: E402

import helpers.data  # noqa: E402
import helpers.train  # noqa: E402
from helpers import resolve, run_cli  # noqa: E402
from helpers.data import read_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the run's name: runs/quality/NAME holds its adapter")
    parser.add_argument("--train-files", help="comma-separated training files instead of the sample's own")
    parser.add_argument("--identity-files", help="comma-separated identity files instead of data/identity_zh.json")
    parser.add_argument("--base", action="store_true", help="measure the base model (an adapter trained 0 steps)")
    parser.add_argument("--limit", type=int, help="measure only the first N of each evaluation set")
    parser.add_argument("--measure-only", action="store_true", help="measure runs/quality/NAME again, without training")
    args, flags = parser.parse_known_args()
    flags = [f for f in flags if f != "--"]
    disable_progress_bars()
    out = resolve(f"runs/quality/{args.name}")
    if not args.measure_only:
        shutil.rmtree(out, ignore_errors=True)
    if args.train_files:
        helpers.data.SAMPLE["train"] = tuple(args.train_files.split(","))
    if args.identity_files:
        rows = [row for path in args.identity_files.split(",") for row in read_rows(path)]
        joined = Path(tempfile.mkdtemp()) / "identity.json"
        joined.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        helpers.train.IDENTITY = joined
    flags = [*flags, "--output_dir", str(out), "--tracking", "disabled", *(["--max_steps", "1", "--learning_rate", "0"]
                                                                          if args.base else [])]
    start = time.perf_counter()
    if args.measure_only:  # the run's own figures, as training wrote them
        from helpers.recipes import Recipe

        recipe, metrics = Recipe.load(out), json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    else:
        recipe, metrics = helpers.train.run(flags)
    seconds = time.perf_counter() - start

    from helpers.chat import load_adapter
    from helpers.evaluate import FIVE, as_turns, independent_measures, measure, measure_own_turns, measure_turns
    from helpers.data import load_alpaca
    from helpers.formatting import prepare_dataset, to_messages

    model, tokenizer, _ = load_adapter(out)
    new_tokens = recipe["max_new_tokens"]
    found = independent_measures(model, tokenizer, new_tokens, args.limit)
    heldout = load_alpaca("sample", split="test")
    talks = [to_messages(row) for row in heldout if row["messages"]]
    rows = heldout.filter(lambda row: not row["messages"])
    old = measure(model, tokenizer, rows.to_list(), prepare_dataset(rows, tokenizer, recipe["max_length"]), new_tokens)
    given, own = measure_turns(model, tokenizer, talks, new_tokens), measure_own_turns(model, tokenizer,
                                                                                        [as_turns(t) for t in talks], new_tokens)
    line = {"name": args.name, "flags": flags[:-4], "train_files": args.train_files, "identity_files": args.identity_files,
            "steps": metrics["steps"], "train_seconds": metrics["train_seconds"], "seconds": round(seconds, 1),
            "eval_loss": round(metrics["eval_loss_after"], 3),
            **{k: found[k] for k in FIVE}, "turn-3 identity": found["turns"]["turn 3"]["identity_share"],
            "turn-2 leakage": found["turns"]["turn 2"]["leakage"],
            "held-out stop": old["stop_rate"], "held-out identity": old["identity_share"],
            "held-out turn-2 identity (given)": given["turn 2"]["identity_share"],
            "held-out turn-2 identity (own)": own["turn 2"]["identity_share"]}
    (out / "quality.json").write_text(json.dumps({**line, "answers": found}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    run_cli(main)  # a wrong adapter or flag: one line and exit 2, not a traceback
