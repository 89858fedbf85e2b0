"""The GPU recipes, rehearsed on the CPU with the tiny weights (``--model_name_or_path`` and ``--use_cpu true``).

bf16 LoRA and 4-bit QLoRA run exactly as glm4-9b and glm4-9b-qlora would: bf16 compute, activation
checkpointing, BFD packing with the padding-free collator, the recipes' LoRA and optimizer settings, and
for QLoRA 4-bit NF4 weights with double quantization (bitsandbytes' CPU backend; the ``qlora`` extra).
"""

import importlib.util
import json
import math

import pytest
import torch
from transformers import TrainerCallback

from conftest import execute, run_main, run_module
from helpers.machine import estimate
from helpers.train import run

NEEDS_BNB = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="the QLoRA rehearsal needs bitsandbytes: pip install -e \".[qlora]\"")


def weight_bytes(model) -> int:
    """Bytes of the frozen base weights as loaded: parameters, plus bitsandbytes' quantization constants."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:  # absmax and the code of each block: what 4-bit storage adds per 64 weights
            frozen += sum(v.numel() * v.element_size() for v in state.as_dict(packed=True).values() if torch.is_tensor(v))
    return frozen


class Inspect(TrainerCallback):
    """Notes what the trainer really trains: the base layers, their dtype, activation checkpointing, sizes."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        q_proj = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj").base_layer
        quant = getattr(q_proj.weight, "quant_state", None)
        self.found = {"q_proj": type(q_proj).__name__, "dtype": model.get_input_embeddings().weight.dtype,
                      "checkpointing": model.base_model.model.is_gradient_checkpointing,
                      "quant_type": quant.quant_type if quant else None, "double_quant": bool(quant and quant.nested),
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                      "weight_bytes": weight_bytes(model)}


def rehearse(name, out):
    """Two steps of the recipe. No evaluation during them: training evaluates before and after anyway, and one at
    step 2 would repeat the one after, with its sample answers generated in 4-bit (15 s of the QLoRA rehearsal,
    measured once at one thread)."""
    inspect = Inspect()
    recipe, metrics = run(["--config", f"configs/{name}.yaml", "--model_name_or_path", "weights/tiny-glm4", "--use_cpu",
                           "true", "--max_steps", "2", "--eval_strategy", "no", "--save_steps", "2", "--logging_steps",
                           "1", "--output_dir", str(out), "--tracking", "disabled"], callbacks=[inspect])
    return recipe, metrics, inspect.found


@pytest.fixture(scope="module")
def bf16(tmp_path_factory, tiny_dir):
    return rehearse("glm4-9b", tmp_path_factory.mktemp("rehearsal") / "bf16")


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, tiny_dir):
    return rehearse("glm4-9b-qlora", tmp_path_factory.mktemp("rehearsal") / "qlora")


def check_recipe(recipe, metrics):
    out = recipe.output_path
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "recipe.yaml", "all_results.json"):
        assert (out / name).is_file(), name
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.bf16 and args.activation_checkpointing and args.use_cpu
    assert (args.packing, args.packing_strategy, args.per_device_train_batch_size) == (True, "bfd", 2)
    assert (args.learning_rate, args.lr_scheduler_type, args.max_length, args.num_train_epochs) == (5e-4, "cosine", 512, 3.0)
    assert args.assistant_only_loss and args.model_init_kwargs == {"dtype": "bfloat16"}
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 32, 0.1)
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    assert metrics["steps"] == 2 and math.isfinite(metrics["eval_loss_after"])


@pytest.mark.slow
def test_the_bf16_lora_rehearsal_runs_the_9b_recipe(bf16):
    recipe, metrics, found = bf16
    check_recipe(recipe, metrics)
    assert found["q_proj"] == "Linear" and found["dtype"] == torch.bfloat16 and found["checkpointing"]


@pytest.mark.slow
@NEEDS_BNB
def test_the_qlora_rehearsal_trains_on_4bit_nf4_weights(qlora):
    recipe, metrics, found = qlora
    check_recipe(recipe, metrics)
    assert found["q_proj"] == "Linear4bit" and found["quant_type"] == "nf4" and found["double_quant"]
    assert found["dtype"] == torch.bfloat16 and found["checkpointing"]


@pytest.mark.slow
@NEEDS_BNB
def test_the_memory_estimate_per_part_against_the_rehearsals(bf16, qlora):
    for recipe, _, found in (bf16, qlora):
        parts = estimate(recipe, digits=None)
        assert parts["lora + grads + adam"] * 1e9 == found["trainable"] * 16  # fp32 weights, grads and 2 Adam moments
        ratio = parts["weights"] * 1e9 / found["weight_bytes"]
        print(f"{recipe.name}: estimated weights {parts['weights'] * 1e9:,.0f} B, measured {found['weight_bytes']:,} B "
              f"({ratio - 1:+.1%}); LoRA state {found['trainable'] * 16:,} B, estimated the same")
        # bf16: 2 bytes a parameter, exactly as loaded; NF4: the estimate leaves biases and norms out (about 1%)
        assert ratio == pytest.approx(1.0, abs=1e-3 if not recipe.get("load_in_4bit") else 0.02), (recipe.name, ratio)


@pytest.mark.slow
@NEEDS_BNB
@pytest.mark.parametrize("which", ["bf16", "qlora"])
def test_the_rehearsal_adapters_chat_and_evaluate(which, request):
    from helpers.evaluate import main as evaluate

    out = request.getfixturevalue(which)[0].output_path
    code, printed, err = run_main(evaluate, "--adapter", str(out), "--max-new-tokens", "2", "--limit", "4")
    assert code == 0 and printed.strip().splitlines()[-1].startswith("fine-tuned"), err[-2000:]
    if which == "qlora":  # a fresh process, as a learner starts it: bitsandbytes' harmless kernel notice is quiet
        chat = run_module("helpers.chat", "--adapter", str(out), "--max-new-tokens", "6", input="你是谁？\n", timeout=300)
        assert chat.returncode == 0 and "assistant> " in chat.stdout, chat.stderr[-2000:]
        assert "Failed to load" not in chat.stderr


@pytest.mark.slow
@NEEDS_BNB
def test_notebook_05_measures_the_qlora_adapter_and_merges_it_in_bf16(qlora, tmp_path):
    run = execute("05_adapter_chat.ipynb", tmp_path, ADAPTER_DIR=str(qlora[0].output_path),
                  MERGED_DIR=str(tmp_path / "merged"), HELDOUT_LIMIT=1, CHAT_SCRIPT=["你好"], MAX_NEW_TOKENS=8)
    assert run.status == "ok", run.status
    found = run.record
    assert found["recipe"] == "glm4-9b-qlora" and "model.safetensors" in found["merged_files"]
    merged = json.loads((tmp_path / "merged" / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in merged and merged["dtype"] == "bfloat16"  # merged into bf16, not 4-bit
    assert all(row["same next token"] for row in found["merge_check"])  # answers like base + adapter


def test_the_cpu_is_refused_for_a_gpu_recipe_unless_asked_for(monkeypatch):
    from helpers.recipes import read_recipe
    from helpers.train import main

    monkeypatch.setattr("helpers.machine.gpu_info", lambda: None)  # no GPU seen, whatever this machine has
    code, _, err = run_main(main, "--config", "glm4-9b-qlora", "--model_name_or_path", "weights/tiny-glm4")
    assert code == 2 and "needs a CUDA GPU" in err and "Traceback" not in err
    assert read_recipe("glm4-9b-qlora", use_cpu=True).device == "cpu"  # --use_cpu true is the way
