"""Loading a GLM-4 model as a recipe says. Taught in notebook 01, where ``load_model`` is written.

Notebooks 02 and 05 and the chat and serving command lines load their models with it. What can go wrong
before loading (no GPU, no bf16, missing weights) is checked first by ``helpers.checks.preflight``.
"""

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

# ---- #@save from notebooks/01_base_model_inference.ipynb: load_model (make sync writes this block) ----
def load_model(recipe, path=None):  #@save
    """The model at `path` (default: the recipe's base) in the recipe's dtype, on its device, for inference."""
    quantization = BitsAndBytesConfig(  # QLoRA recipes: 4-bit NF4 weights, computed in bf16 (notebook 04)
        load_in_4bit=True, bnb_4bit_quant_type=recipe["bnb_4bit_quant_type"],  # "nf4"
        bnb_4bit_use_double_quant=recipe["use_bnb_nested_quant"], bnb_4bit_compute_dtype=getattr(torch, recipe["dtype"]),
    ) if recipe.get("load_in_4bit") else None
    model = AutoModelForCausalLM.from_pretrained(
        path or recipe.model_dir,
        dtype=getattr(torch, recipe["dtype"]),  # torch.bfloat16 on a GPU, torch.float32 on the CPU
        device_map=recipe.device,  # straight onto the GPU ("cuda": this process's GPU under accelerate)
        quantization_config=quantization,
    )
    return model.eval()  # inference mode: dropout off (the trainer switches it back on to train)
# ---- end of #@save ----
