"""Loading a GLM-4 model as a profile says. Taught in notebook 01, where ``load_model`` is written.

Notebooks 02, 04 and 05 and every command line load their models with it. What can go wrong
before loading (no GPU, no bf16, missing weights) is checked first by ``helpers.checks.preflight``.
"""

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def load_model(profile, path=None):  #@save
    """The model at `path` (default: the profile's base) in the profile's dtype, on its device, for inference."""
    quantization = BitsAndBytesConfig(  # QLoRA profiles: 4-bit NF4 weights, computed in bf16 (notebook 04)
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ) if profile.load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(
        path or profile.model_dir,
        dtype=getattr(torch, profile.dtype),  # torch.bfloat16 on a GPU, torch.float32 on the CPU
        device_map=profile.device,  # straight onto the GPU ("cuda": this process's GPU under accelerate)
        quantization_config=quantization,
    )
    return model.eval()  # inference mode: dropout off (the trainer switches it back on to train)
