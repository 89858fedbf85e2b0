"""LoRA training speed and memory of the real GLM-4-9B shape on one GPU, recipe against recipe.

No download: ``GlmConfig()`` is GLM-4-9B's shape, and the model is built at random initialization
(throughput and memory do not depend on the weights' values). Each recipe runs LoRA SFT steps
(forward, backward, AdamW on the LoRA weights) on synthetic token ids with Alpaca-GPT4-zh's length
profile (the same log-normal as benchmarks/train_throughput.py), and reports, after warm-up steps:

- real tokens/s: the examples' own tokens, never padding;
- MFU: real tokens/s x FLOPs per token / the GPU's peak dense bf16 FLOP/s. FLOPs per token are
  counted as 4N without and 6N with gradient checkpointing (forward 2N, the backward's input
  gradients 2N, the recomputed forward 2N; frozen weights get no weight gradients), N the matmul
  parameters (8.8B, the embedding table excluded, the output projection included), attention's
  own FLOPs not counted;
- peak GPU memory (``torch.cuda.max_memory_allocated``) of the recipe's whole process life.

Recipes (the LoRA is the original tutorial's: r 8, alpha 32, q/k/v, for all of them):

- original: batch 2 padded to the longest, no packing, loss on the full text, no checkpointing;
- packed: BFD-packed rows of max_length, padding-free (position ids), answers-only loss, gradient
  checkpointing, ``--rows`` rows a step (the glm4-9b recipe's setting);
- packed-no-gc: the same without gradient checkpointing;
- qlora: packed with the weights in 4-bit NF4 (bitsandbytes), gradient checkpointing.

Each uses the best attention kernel installed: flash_attention_2 when the flash-attn package is
there, else PyTorch's SDPA. Prints one JSON line (and writes it with ``--out``).

    .venv/bin/python benchmarks/gpu_lora.py                        # one GPU, about 5 minutes on an H200
    .venv/bin/python benchmarks/gpu_lora.py --recipes original packed --steps 5
    .venv/bin/python benchmarks/gpu_lora.py --tiny                 # a 2-layer config on the CPU: checks the script
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_throughput import lengths  # noqa: E402  (same length profile as the CPU benchmark)

RECIPES = ("original", "packed", "packed-no-gc", "qlora")
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "L40": 181.0, "A10": 125.0, "L4": 121.0, "4090": 165.0, "3090": 71.0}  # dense, no sparsity


def model_config(tiny: bool):
    from transformers import GlmConfig

    if not tiny:
        return GlmConfig(use_cache=False)  # GLM-4-9B: 4096 wide, 40 layers, vocabulary 151,552
    return GlmConfig(vocab_size=3072, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=32,
                     num_key_value_heads=2, intermediate_size=432, pad_token_id=0, use_cache=False)


def matmul_parameters(config) -> int:
    """N: the parameters that multiply every token (all linear layers and the output projection)."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + h * 2 * config.intermediate_size + config.intermediate_size * h
    return config.num_hidden_layers * per_layer + h * config.vocab_size


def attention_kernel(device: str) -> str:
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def batches(recipe: str, args, vocab: int, seed: int):
    """An endless stream of (batch, real tokens) in the recipe's format, from the same examples."""
    import random

    import torch
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from datasets import Dataset

    rng = random.Random(seed)
    shapes = lengths(args.examples_tokens, seed, args.max_length)
    rows = []
    for prompt, length in shapes:
        ids = [rng.randrange(16, vocab - 16) for _ in range(length)]
        labels = list(ids) if recipe == "original" else [-100] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "labels": labels})
    if recipe == "original":
        collate = DataCollatorForLanguageModeling(pad_token_id=0)
        groups = [rows[i:i + 2] for i in range(0, len(rows) - 1, 2)]
    else:
        packed = pack_dataset(Dataset.from_list(rows), args.max_length, strategy="bfd").to_list()
        collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
        groups = [packed[i:i + args.rows] for i in range(0, len(packed) - args.rows + 1, args.rows)]
    while True:
        for group in groups:
            batch = collate(group)
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            yield batch, real


def build_model(recipe: str, args, device: str, kernel: str, weights_dir):
    import torch
    from transformers import GlmForCausalLM

    dtype = torch.float32 if device == "cpu" and args.tiny else torch.bfloat16
    config = model_config(args.tiny)
    if recipe == "qlora":
        from helpers.models import load_model
        from helpers.recipes import read_recipe

        if not (Path(weights_dir) / "config.json").is_file():  # 4-bit quantization happens on load
            torch.manual_seed(0)
            with torch.device(device):
                GlmForCausalLM._from_config(config, dtype=torch.bfloat16).save_pretrained(weights_dir)
            gc.collect()
            torch.cuda.empty_cache() if device == "cuda" else None
            torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
        model = load_model(read_recipe("glm4-9b-qlora", use_cpu=device == "cpu"), weights_dir)  # the course's 4-bit load
        model.set_attn_implementation(kernel)
        return model
    torch.manual_seed(0)
    with torch.device(device):
        return GlmForCausalLM._from_config(config, dtype=dtype, attn_implementation=kernel)


def run_recipe(recipe: str, args, device: str, weights_dir) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    kernel = attention_kernel(device)
    gc_on = recipe in ("packed", "qlora")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(recipe, args, device, kernel, weights_dir)
    if gc_on:  # as SFTTrainer does it: no fp32 upcast of the frozen weights, even for 4-bit
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj"]))
    if recipe == "qlora":  # SFTTrainer keeps a quantized model's LoRA weights in bf16
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    stream = batches(recipe, args, model.config.vocab_size, args.seed)

    def step():
        batch, real = next(stream)
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return real, loss

    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start, real_tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        real, loss = step()
        real_tokens += real
    loss = float(loss)  # waits for the GPU
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n = matmul_parameters(model.config)
    flops_per_token = (6 if gc_on else 4) * n
    rate = real_tokens / seconds
    result = {"real_tokens_per_s": round(rate, 1), "steps": args.steps, "real_tokens": real_tokens,
              "seconds": round(seconds, 2), "gradient_checkpointing": gc_on, "attention": kernel,
              "flops_per_token": flops_per_token, "achieved_tflops": round(rate * flops_per_token / 1e12, 1),
              "final_loss": round(loss, 3)}
    if device == "cuda":
        result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result["mfu"] = round(result["achieved_tflops"] / peak, 3) if peak else None
    del model, optimizer
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per recipe")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2, help="packed rows of max_length per step (the recipe's 2)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples-tokens", type=int, default=120_000, help="real tokens of synthetic examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer config: checks the script, on any device")
    parser.add_argument("--out", help="also write the JSON line to this file")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("error: the 9B shape needs a CUDA GPU: run on one, or pass --tiny to check the script on the CPU.")
    line = {"benchmark": "gpu_lora", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "shape": "tiny" if args.tiny else "glm-4-9b", "max_length": args.max_length,
            "rows": args.rows, "matmul_parameters": matmul_parameters(model_config(args.tiny)), "recipes": {}}
    with tempfile.TemporaryDirectory() as weights_dir:  # random 9B weights for the 4-bit load, deleted at the end
        for recipe in args.recipes:
            if recipe == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
                line["recipes"][recipe] = {"skipped": "bitsandbytes is not installed (pip install -e \".[qlora]\")"}
                continue
            try:
                line["recipes"][recipe] = run_recipe(recipe, args, device, weights_dir)
            except torch.OutOfMemoryError as err:
                line["recipes"][recipe] = {"error": f"out of memory: {str(err).splitlines()[0][:160]}"}
                gc.collect()
                torch.cuda.empty_cache()
            print(f"{recipe}: {line['recipes'][recipe]}", file=sys.stderr, flush=True)
    base = line["recipes"].get("original", {}).get("real_tokens_per_s")
    if base:
        line["speedup_vs_original"] = {k: round(v["real_tokens_per_s"] / base, 2)
                                       for k, v in line["recipes"].items() if "real_tokens_per_s" in v}
    text = json.dumps(line)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return line


if __name__ == "__main__":
    main()
