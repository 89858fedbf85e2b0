"""Peak GPU memory of a LoRA fine-tune, estimated from the profile before any weights are loaded.

Taught in notebook 04 (the memory arithmetic); used by the training command to refuse a GPU that is
too small, naming the profile that fits. The model's shape comes from its config.json (or GLM-4-9B's
when the weights are not downloaded yet), built on the meta device: no memory, no time.

Calibration: GLM-4's authors measured bf16 LoRA (r 8, q/k/v, batch 1-2 at 512 tokens, with
activation checkpointing) peaking at about 21.5 GB; the estimate for the glm4-9b profile is within
a few percent of that. The other terms are first-order arithmetic, stated in each line below.
"""

from __future__ import annotations

GB = 1e9


def model_config(profile):
    """The profile's model config: from its config.json when present, else GLM-4-9B's shape."""
    from transformers import AutoConfig, GlmConfig

    return AutoConfig.from_pretrained(profile.model_dir) if profile.weights_present() else GlmConfig()


def estimate(profile, config=None) -> dict[str, float]:
    """Peak memory in GB by part, and ``total``, for training the profile on one GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    config = config or model_config(profile)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    bytes_per = {"bfloat16": 2, "float16": 2, "float32": 4}[profile.dtype]
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    out_features = {"q_proj": config.num_attention_heads * config.head_dim, "k_proj": kv, "v_proj": kv,
                    "o_proj": h, "gate_up_proj": 2 * config.intermediate_size, "down_proj": h}
    in_features = {**dict.fromkeys(out_features, h), "o_proj": config.num_attention_heads * config.head_dim,
                   "down_proj": config.intermediate_size}
    lora = layers * sum(profile.lora_r * (in_features[m] + out_features[m]) for m in profile.lora_target_modules)
    tokens = profile.batch_size * profile.max_length

    parts = {}
    if profile.load_in_4bit:  # NF4 weights: half a byte each plus a scale per 64; embeddings stay bf16
        parts["weights"] = (total - embed) * (0.5 + 1 / 64) / GB + embed * 2 / GB
    else:
        parts["weights"] = total * bytes_per / GB
    parts["lora + grads + adam"] = lora * (4 + 4 + 8) / GB  # fp32 weights, gradients, two Adam moments
    # activations: with checkpointing one hidden state per layer is kept, plus one layer recomputed in full
    per_layer = tokens * h * bytes_per
    recompute = tokens * (6 * h + 4 * config.intermediate_size) * bytes_per
    parts["activations"] = ((layers * per_layer + recompute) if profile.device == "cuda"
                            else layers * (tokens * (8 * h + 4 * config.intermediate_size) * bytes_per)) / GB
    parts["logits + loss"] = tokens * v * (bytes_per + 4 + 4) / GB  # logits, fp32 copy and its gradient
    parts["cuda context + allocator"] = 1.2 if profile.device == "cuda" else 0.0
    parts["total"] = sum(parts.values())
    return {k: round(x, 2) for k, x in parts.items()}


def fitting_profile(gpu_gb: float, bf16: bool = True):
    """The largest of the course's GPU profiles whose estimate fits ``gpu_gb``, or None."""
    from helpers.profiles import PROFILES

    if not bf16:
        return None
    for name in ("glm4-9b", "glm4-9b-qlora"):
        if estimate(PROFILES[name])["total"] <= gpu_gb:
            return PROFILES[name]
    return None


def check_fits(profile, gpu_gb: float) -> None:
    """Raise a one-sentence CourseError when the profile's estimate exceeds the GPU's memory."""
    from helpers import CourseError

    need = estimate(profile)["total"]
    if need <= gpu_gb:
        return
    other = fitting_profile(gpu_gb)
    fix = (f"use --profile {other.name} (PROFILE = \"{other.name}\", about {estimate(other)['total']:.0f} GB)"
           if other else "use a larger GPU, several GPUs with configs/accelerate/zero3.yaml, or the tiny profile")
    raise CourseError(f"profile {profile.name} needs about {need:.0f} GB of GPU memory but this GPU has "
                      f"{gpu_gb:.0f} GB: {fix}.")
