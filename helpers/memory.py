"""GPU memory: what this machine's GPU has, and what a profile's LoRA fine-tune needs at its peak.

Taught in notebook 04 (the memory arithmetic). The one place that asks torch about the GPU, so
notebooks never call ``torch.cuda`` directly. The estimate is built from the model's config on
the meta device (no memory, no time) before any weights are loaded; ``auto`` and the training
command use it to pick a profile and to refuse a GPU that is too small.

Units: decimal GB (1e9 bytes), as GPU memory is sold. Calibration: GLM-4's authors measured bf16
LoRA (A100, batch 1, 512 + 512 tokens, activation checkpointing on) at 21,531 MiB = 22.6 GB =
21.0 GiB; the estimate for the glm4-9b profile is 22.1 GB, about 2% under it.
"""

from __future__ import annotations

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


def model_config(profile):
    """The profile's model config: from its config.json when present, else GLM-4-9B's shape."""
    from transformers import AutoConfig, GlmConfig

    return AutoConfig.from_pretrained(profile.model_dir) if profile.weights_present() else GlmConfig()


def estimate(profile, config=None, digits: int | None = 2) -> dict[str, float]:
    """Peak memory in GB by part, and ``total``, for training the profile on one GPU (rounded to ``digits``)."""
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
    parts["activations"] = ((layers * per_layer + recompute) if profile.activation_checkpointing
                            else layers * (tokens * (8 * h + 4 * config.intermediate_size) * bytes_per)) / GB
    parts["logits + loss"] = tokens * v * (bytes_per + 4 + 4) / GB  # logits, fp32 copy and its gradient
    parts["cuda context + allocator"] = 1.2 if profile.device == "cuda" else 0.0
    parts["total"] = sum(parts.values())
    return {k: x if digits is None else round(x, digits) for k, x in parts.items()}
