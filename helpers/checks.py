"""Checks that run before anything heavy loads, each failing in one sentence with the fix.

Taught in notebooks 01 (device and weights) and 04 (output directory and resume); every command
line runs the same checks. Whether a recipe can run on this machine at all is ``helpers.machine.fits``:

    checkpoint = preflight(recipe, output_dir, resume)    # machine, weights, output directory
    adapter_dir, recipe = check_adapter("outputs/lora-tiny")  # an adapter and its own recipe, checked to load
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import CourseError, resolve, shown
from helpers.families import has_chat_template
from helpers.machine import fits, get_recipe, gpu_info
from helpers.recipes import Recipe, read_recipe, recipe_names

CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def missing_error(path: Path) -> CourseError:
    """'<dir> not found: <how to get it>', with the fix that fits the directory."""
    fix = "check the path"
    for recipe in map(read_recipe, recipe_names()):
        if path in (recipe.model_dir, recipe.chat_model_dir):
            fix = ("build it with `make tiny`" if recipe.device == "cpu" else
                   'download it with `python -m helpers.download glm4-9b`, or set RECIPE = "tiny"')
            break
    return CourseError(f"{shown(path)} not found: {fix}.")


def check_machine(recipe: Recipe, machine: dict | None = None) -> None:
    """Refuse, in one sentence, a recipe that ``fits`` says this machine cannot run."""
    reason = fits(recipe, machine)
    if reason:
        raise CourseError(reason + ".")


def machine_recipe() -> Recipe:
    """How this machine loads a model that came without a recipe: the 9B's settings (bf16 on the GPU) with a CUDA
    GPU, tiny's (fp32 on the CPU) without."""
    return read_recipe("glm4-9b" if gpu_info() else "tiny")


def check_weights(recipe: Recipe, path=None) -> Path:
    """The model directory (default: the recipe's base), after checking it holds a model, a tokenizer
    and a chat template."""
    path = resolve(path) if path is not None else recipe.model_dir
    if not (path / "config.json").is_file():
        raise missing_error(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CourseError(f"{shown(path)} has no tokenizer: copy the whole model directory, tokenizer files included.")
    if not has_chat_template(path):
        raise CourseError(f"{shown(path)} has no chat template: run `python -m helpers.download glm4-9b` "
                          "once more, which adds GLM-4's (helpers/glm4_chat_template.jinja).")
    return path


def complete_checkpoints(output_dir) -> list[Path]:
    """Checkpoints the Trainer finished writing, oldest first; a half-written one is skipped with a warning."""
    def step(path):
        tail = path.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = []
    for path in sorted(resolve(output_dir).glob("checkpoint-*"), key=step):
        missing = [n for n in CHECKPOINT_FILES if not (path / n).is_file()]
        if missing:
            print(f"warning: skipping {path.name}, left incomplete (no {missing[0]}): it is not loaded")
        else:
            found.append(path)
    return found


def check_output_dir(output_dir, resume: bool) -> Path | None:
    """The checkpoint to resume from (or None); refuses to write over another run's results."""
    output_dir = resolve(output_dir)
    if not output_dir.exists():
        if resume:
            print(f"resume: {shown(output_dir)} does not exist yet, so training starts from the beginning")
        return None
    checkpoints = complete_checkpoints(output_dir)
    if resume:
        if not checkpoints:
            print(f"resume: no complete checkpoint in {shown(output_dir)}, so training starts from the beginning")
        return checkpoints[-1] if checkpoints else None
    if (output_dir / "adapter_config.json").is_file() or any(output_dir.glob("checkpoint-*")):
        raise CourseError(f"{shown(output_dir)} already holds a trained adapter or checkpoints: resume it with "
                          "--resume (RESUME = True), choose another --output-dir, or delete that directory.")
    return None


def preflight(recipe: Recipe, output_dir=None, resume: bool = False) -> Path | None:
    """Every cheap check before a model loads: this machine (``fits``), the weights, and (when given) the output
    directory. Returns the checkpoint to resume from, if any."""
    check_machine(recipe)
    check_weights(recipe)
    return check_output_dir(output_dir, resume) if output_dir is not None else None


def check_adapter(adapter_dir, recipe_name: str = "auto") -> tuple[Path, Recipe]:
    """The adapter's path and the recipe it was trained with, after checking that it loads here: the
    directory is an adapter, its base model is present, its shapes fit that base, and this machine can run it.
    ``adapter_dir`` None means the ``output_dir`` of the recipe ``recipe_name`` (``auto``: the one for this machine)."""
    adapter_dir = resolve(adapter_dir if adapter_dir is not None else get_recipe(recipe_name).output_dir)
    if not adapter_dir.is_dir():
        raise CourseError(f"{shown(adapter_dir)} does not exist: train one with `python -m helpers.train` "
                          "(or notebook 04), or check the adapter path.")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        hint = " (it holds a full model: use --model instead)" if (adapter_dir / "config.json").is_file() else ""
        raise CourseError(f"{shown(adapter_dir)} is not a LoRA adapter: it has no adapter_config.json{hint}.")
    recipe = Recipe.load(adapter_dir)
    if recipe is None:  # an adapter made outside the course: its recorded base, loaded as this machine allows
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or "(not recorded)"
        recipe = Recipe("unknown", {**machine_recipe(), "model_name_or_path": base})
    if not recipe.weights_present():
        raise CourseError(f"the adapter's base model {recipe['model_name_or_path']} is missing: build or download it "
                          "(`make tiny`, or `python -m helpers.download glm4-9b`) and run again.")
    check_adapter_fits(adapter_dir, recipe.model_dir)
    check_machine(recipe)
    return adapter_dir, recipe


def check_full_model(model_dir) -> tuple[Path, Recipe]:
    """A full (merged or plain) model directory and how to load it: its saved recipe, or this machine's, never
    4-bit (merged weights are plain); refused in one sentence when it is an adapter or not a model at all."""
    model_dir = resolve(model_dir)
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        raise CourseError(f"{shown(model_dir)} is a LoRA adapter, not a full model: use --adapter {shown(model_dir)}.")
    recipe = (Recipe.load(model_dir) or machine_recipe()).replace(model_name_or_path=str(model_dir), load_in_4bit=False)
    check_weights(recipe)
    check_machine(recipe)
    return model_dir, recipe


def check_adapter_fits(adapter_dir: Path, base_dir: Path) -> None:
    """Every LoRA matrix of the adapter has the shape its layer in the base model needs (read from the
    files' headers and the base's config: nothing is loaded)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    layers = dict(base.named_modules())
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        for key in f.keys():
            name, lora, matrix = key.removeprefix("base_model.model.").rpartition(".lora_")
            if not lora:  # a whole layer trained beside the adapter (lora_modules_to_save): the base layer's shape
                name, _, matrix = matrix.rpartition(".")
            layer, shape = layers.get(name), f.get_slice(key).get_shape()
            if layer is None:
                expected = None
            elif not lora:
                expected = list(getattr(layer, matrix).shape) if hasattr(layer, matrix) else None
            else:  # lora_A: rank x in; lora_B: out x rank; DoRA's lora_magnitude_vector: out
                expected = [shape[0], layer.in_features] if matrix.startswith("A") else [layer.out_features, *shape[1:]]
            if shape != expected:
                raise CourseError(f"{shown(adapter_dir)} does not fit {shown(base_dir)} ({name} "
                                  f"{'is missing' if layer is None else f'needs {expected}, the adapter has {shape}'}): "
                                  "it was trained on another base model; use the base it was trained on.")
