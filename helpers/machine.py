"""This machine and the recipes: what its GPU has, what a recipe needs at its peak, and whether it fits.

Taught in notebooks 00 (which recipe runs here, and why) and 04 (the memory arithmetic). The one place
that asks torch about the GPU, so notebooks never call ``torch.cuda`` directly, and the one function that
decides whether a recipe runs on a machine, ``fits``: ``auto``, the checks before loading, the environment
table and the tutorial runner all ask it.

Units: decimal GB (1e9 bytes), as GPU memory is sold. GLM-4's fine-tuning README gives 21,531 MiB
(22.6 GB) for bf16 LoRA, without saying under which conditions; the estimate for glm4-9b is 22.1 GB.

    python -m helpers.machine            # every recipe, with its estimate
    python -m helpers.machine auto       # the recipe this machine runs, and why
"""

from __future__ import annotations

import importlib.util
import sys

from helpers import run_cli
from helpers.families import family
from helpers.recipes import read_recipe, recipe_names

GB = 1e9


def gpu_info() -> dict | None:
    """The first CUDA GPU's name, memory (GB) and bf16 support, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "total_gb": props.total_memory / GB,  # decimal GB, as cards are sold (a "24 GB" card: about 25.8)
        "bf16": torch.cuda.is_bf16_supported(),
        "capability": f"{props.major}.{props.minor}",
    }


def this_machine() -> dict:
    """This machine as ``fits`` reads one: its GPU (or None) and whether bitsandbytes is installed."""
    return {"gpu": gpu_info(), "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None}


def model_config(recipe):
    """The recipe's model config: from its config.json when present, else the family's released shape."""
    import transformers

    if (recipe.model_dir / "config.json").is_file():
        return transformers.AutoConfig.from_pretrained(recipe.model_dir)
    return getattr(transformers, family(recipe["family"]).config_class)()


def estimate(recipe, config=None, digits: int | None = 2) -> dict[str, float]:
    """Peak memory in GB by part, and ``total``, for training the recipe on one GPU (rounded to ``digits``)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = config or model_config(recipe)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    bytes_per = {"bfloat16": 2, "float16": 2, "float32": 4}[recipe["dtype"]]
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    out_features = {"q_proj": config.num_attention_heads * config.head_dim, "k_proj": kv, "v_proj": kv,
                    "o_proj": h, "gate_up_proj": 2 * config.intermediate_size, "down_proj": h}
    in_features = {**dict.fromkeys(out_features, h), "o_proj": config.num_attention_heads * config.head_dim,
                   "down_proj": config.intermediate_size}
    lora = layers * sum(recipe["lora_r"] * (in_features[m] + out_features[m]) for m in recipe["lora_target_modules"])
    tokens = recipe["per_device_train_batch_size"] * recipe["max_length"]

    parts = {}
    if recipe.get("load_in_4bit"):  # NF4 weights: half a byte each plus a scale per 64; embeddings stay bf16
        parts["weights"] = (total - embed) * (0.5 + 1 / 64) / GB + embed * 2 / GB
    else:
        parts["weights"] = total * bytes_per / GB
    parts["lora + grads + adam"] = lora * (4 + 4 + 8) / GB  # fp32 weights, gradients, two Adam moments
    # activations: with checkpointing one hidden state per layer is kept, plus one layer recomputed in full
    per_layer = tokens * h * bytes_per
    recompute = tokens * (6 * h + 4 * config.intermediate_size) * bytes_per
    parts["activations"] = ((layers * per_layer + recompute) if recipe.get("activation_checkpointing")
                            else layers * (tokens * (8 * h + 4 * config.intermediate_size) * bytes_per)) / GB
    parts["logits + loss"] = tokens * v * (bytes_per + 4 + 4) / GB  # logits, fp32 copy and its gradient
    parts["cuda context + allocator"] = 1.2 if recipe.device == "cuda" else 0.0
    parts["total"] = sum(parts.values())
    return {k: x if digits is None else round(x, digits) for k, x in parts.items()}


def fits(recipe, machine: dict | None = None) -> str | None:
    """Why ``recipe`` cannot run on ``machine`` (this one by default), in one sentence with the fix; None if it can:
    the GPU it needs, bf16, memory for its estimate, and bitsandbytes for 4-bit weights. (Whether the weights are
    downloaded is ``weights_missing``: a machine can fit a recipe before they are.)

    ``machine`` is ``this_machine()``'s dict: ``{"gpu": gpu_info() or None, "bitsandbytes": bool}``.
    """
    machine = this_machine() if machine is None else machine
    gpu, tiny = machine["gpu"], 'the tiny recipe (RECIPE = "tiny"; --config configs/tiny.yaml)'
    if recipe.device == "cuda":
        if gpu is None:
            return f"recipe {recipe.name} needs a CUDA GPU and none was found: use {tiny} to run on the CPU"
        if recipe["dtype"] == "bfloat16" and not gpu["bf16"]:
            return (f"{gpu['name']} has no bf16, and the course trains GLM-4 in bf16 only (fp16 gives nan losses, "
                    f"zai-org/GLM-4 issue 96): use a GPU that has it (A100, RTX 30/40, L4, H100), or {tiny}")
        need = estimate(recipe)["total"]
        if need > gpu["total_gb"]:
            smaller = [other for other in gpu_recipes() if estimate(other)["total"] <= gpu["total_gb"]]
            fix = (f"use recipe {smaller[0].name} (about {estimate(smaller[0])['total']:.0f} GB)" if smaller else
                   f"use a larger GPU, several GPUs with configs/accelerate/zero3.yaml, or {tiny}")
            return f"recipe {recipe.name} needs about {need:.0f} GB of GPU memory but this GPU has {gpu['total_gb']:.0f} GB: {fix}"
    if recipe.get("load_in_4bit") and not machine["bitsandbytes"]:
        return (f"recipe {recipe.name} loads 4-bit weights with bitsandbytes, which is not installed: run "
                "`pip install -e \".[qlora]\"`")
    return None


def weights_missing(recipe) -> str | None:
    """Why the recipe's base model is not on disk yet, with the command that gets it; None when it is there."""
    if recipe.weights_present():
        return None
    how = ("build it with `make tiny`" if recipe.device == "cpu" else
           f"download it with `python -m helpers.download {family(recipe['family']).download_name}`")
    return f"{recipe['model_name_or_path']} not found: {how}"


def gpu_recipes() -> list:
    """The course's GPU recipes, the one that needs the most memory first."""
    recipes = [read_recipe(name) for name in recipe_names()]
    return sorted((r for r in recipes if r.device == "cuda"), key=lambda r: -estimate(r)["total"])


def choose(machine: dict | None = None):
    """The recipe ``auto`` runs on ``machine`` (this one by default), and why: the largest GPU recipe that fits and
    whose weights are downloaded, else tiny."""
    machine = this_machine() if machine is None else machine
    why_not = []
    for recipe in gpu_recipes():
        reason = fits(recipe, machine) or weights_missing(recipe)
        if reason is None:
            gpu = machine["gpu"]
            return recipe, (f"{gpu['name']} with bf16 and {gpu['total_gb']:.0f} GB, enough for {recipe.name} "
                            f"(about {estimate(recipe)['total']:.0f} GB), and its weights are present")
        why_not.append(reason)
    return read_recipe("tiny"), (why_not[-1] if why_not else "no GPU recipe")  # the smallest GPU recipe's reason


def get_recipe(name: str = "auto", **changes):
    """The named recipe (``auto``: the one ``choose`` picks here, said in one line), with ``changes`` applied."""
    if name == "auto":
        recipe, reason = choose()
        print(f"recipe: {recipe.name} ({reason})")
        return recipe.replace(**changes) if changes else recipe
    return read_recipe(name, **changes)


def main(argv=None) -> int:
    for name in (sys.argv[1:] if argv is None else argv) or recipe_names():
        recipe = get_recipe(name)
        print(f"# recipe {recipe.name}\n{recipe.describe()}")
        if recipe.device == "cuda":
            print(f"# estimated peak GPU memory: {estimate(recipe)['total']:.1f} GB")
        print(f"# on this machine: {fits(recipe) or 'fits'}\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
