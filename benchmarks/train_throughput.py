"""Training throughput on the CPU: the original recipe against the course's settings, same model, same data.

A GLM of about 26M parameters built like the tiny one (GLM-4's layer structure, the tiny tokenizer's
vocabulary, random weights: speed does not depend on their values) is LoRA-trained with TRL's
SFTTrainer for one pass over the same synthetic examples, once per recipe, each recipe in its own
process so that its peak memory is its own:

- original: batch 2, padded to the longest example of the batch, no packing, loss on the full text
  (the original tutorial's settings);
- padding-free: batch 2 as above, but the two examples are concatenated into one row with position
  ids instead of padding (TRL ``padding_free=True``), loss on the answers only;
- packed: examples packed best-fit-decreasing into rows of ``max_length`` tokens (TRL
  ``packing=True, packing_strategy="bfd"``), one row a step, so about the same real tokens per
  update as the original's two padded examples; loss on the answers only.

The examples have Alpaca-GPT4-zh's length profile in GLM-4 tokens: log-normal, median 180 tokens,
sigma 0.8, cut to 24..512, the prompt about a sixth. Real tokens are the examples' own tokens,
never padding. Prints one JSON line: real tokens/s, steps, peak memory (resident set) for each
recipe, and the ratios to the original.

    .venv/bin/python benchmarks/train_throughput.py                    # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --tokens 20000 --layers 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECIPES = ("original", "padding-free", "packed")


def lengths(n_tokens: int, seed: int, max_length: int) -> list[tuple[int, int]]:
    """(prompt, total) token lengths of examples adding up to about ``n_tokens`` real tokens."""
    rng = random.Random(seed)
    out, total = [], 0
    while total < n_tokens:
        length = min(max_length, max(24, int(math.exp(rng.gauss(math.log(180), 0.8)))))
        prompt = max(8, min(length - 8, int(length * rng.uniform(0.08, 0.25))))
        out.append((prompt, length))
        total += length
    return out


def dataset(shapes, vocab: int, full_text_loss: bool, seed: int):
    """Random token ids of the given shapes; labels -100 on the prompt unless the loss is on the full text."""
    from datasets import Dataset

    rng = random.Random(seed + 1)
    rows = {"input_ids": [], "labels": []}
    for prompt, length in shapes:
        ids = [rng.randrange(16, vocab - 16) for _ in range(length)]
        rows["input_ids"].append(ids)
        rows["labels"].append(list(ids) if full_text_loss else [-100] * prompt + ids[prompt:])
    return Dataset.from_dict(rows)


def glm_config(vocab: int, layers: int, hidden: int, pad_token_id: int):
    """The tiny model's structure at a larger width: about 26M parameters with the defaults."""
    from transformers import GlmConfig

    return GlmConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=hidden // 64, head_dim=64, num_key_value_heads=2,
                     intermediate_size=int(hidden * 3.375), attention_bias=True, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                     max_position_embeddings=1024, pad_token_id=pad_token_id, use_cache=False)


def run_recipe(recipe: str, args) -> dict:
    """Train one pass with ``recipe`` in this process; real tokens/s, steps and peak resident memory."""
    import resource

    import torch
    from datasets.utils import logging as ds_logging
    from peft import LoraConfig
    from transformers import GlmForCausalLM
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    shapes = lengths(args.tokens, args.seed, args.max_length)
    data = dataset(shapes, args.vocab, full_text_loss=recipe == "original", seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)  # its pad id pads; the data are token ids already
    model = GlmForCausalLM(glm_config(args.vocab, args.layers, args.hidden, tokenizer.pad_token_id))
    settings = {
        "original": dict(per_device_train_batch_size=2),
        "padding-free": dict(per_device_train_batch_size=2, padding_free=True, max_length=None),  # already cut
        "packed": dict(per_device_train_batch_size=1, packing=True, packing_strategy="bfd"),
    }[recipe]
    settings = {"max_length": args.max_length, **settings}
    config = SFTConfig(output_dir=str(Path(args.work) / recipe), num_train_epochs=1,
                       learning_rate=5e-4, use_cpu=True, report_to="none", save_strategy="no",
                       logging_steps=10_000, disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
                       **settings)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj"],
                      task_type="CAUSAL_LM")  # the original tutorial's LoRA, the same for every recipe
    ds_logging.disable_progress_bar()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, peft_config=lora, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    real = sum(length for _, length in shapes)
    return {"real_tokens": real, "examples": len(shapes), "steps": trainer.state.global_step,
            "seconds": round(seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def _child(recipe, args, queue):
    try:
        queue.put(run_recipe(recipe, args))
    except BaseException as err:  # the parent must hear of it, or it would wait for ever
        queue.put({"error": f"{type(err).__name__}: {err}"})
        raise


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=60_000, help="real tokens trained per recipe")
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=3072, help="the tiny tokenizer's padded vocabulary")
    parser.add_argument("--tokenizer", default="weights/tiny-glm4", help="a GLM-4 tokenizer (`make tiny` builds this one)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--work", default="runs/benchmarks/train_throughput")
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")  # a fresh process per recipe: its own peak memory
    results = {}
    for recipe in args.recipes:
        queue = context.Queue()
        process = context.Process(target=_child, args=(recipe, args, queue))
        process.start()
        results[recipe] = queue.get()
        process.join()
        if "error" in results[recipe]:
            sys.exit(f"error: recipe {recipe} failed: {results[recipe]['error']}")
        print(f"{recipe}: {results[recipe]}", file=sys.stderr, flush=True)
    line = {"benchmark": "train_throughput", "device": "cpu", "parameters": results[args.recipes[0]]["parameters"],
            "tokens": args.tokens, "max_length": args.max_length, "recipes": results}
    if "original" in results:
        base = results["original"]["real_tokens_per_s"]
        line["speedup_vs_original"] = {k: round(v["real_tokens_per_s"] / base, 2) for k, v in results.items()}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
