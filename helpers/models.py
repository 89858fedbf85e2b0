"""Load GLM-4 models and tokenizers, and describe them: the one place the course loads a model.

Taught in notebook 01 (loading, structure, parameter counts, memory) and notebook 02 (the end ids).
Every check a learner can fail runs before any weights are read, and says the fix in one sentence:

    model, tokenizer = load_model(get_profile("tiny"))          # the base model
    model, tokenizer = load_model(get_profile("glm4-9b"), "chat")  # glm-4-9b-chat-hf, to compare
"""

from __future__ import annotations

from pathlib import Path

from helpers import REPO_ROOT, CourseError, resolve
from helpers.tiny import END_TOKENS  # <|endoftext|>, <|user|>, <|observation|>

# parameter kinds, in the order count_parameters reports them
KINDS = ("embeddings", "attention", "mlp", "norms", "lm_head", "lora", "other")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def missing_error(path: Path) -> CourseError:
    """'<dir> not found: <how to get it>', with the fix that fits the directory."""
    from helpers.profiles import PROFILES

    fix = "check the path"
    for profile in PROFILES.values():
        if path in (profile.model_dir, profile.chat_model_dir):
            fix = ("build it with `make tiny`" if profile.name == "tiny" else
                   "download it with `python -m helpers.download glm4-9b`, or set PROFILE = \"tiny\"")
            break
    return CourseError(f"{_shown(path)} not found: {fix}.")


def load_tokenizer(path):
    """The tokenizer saved in ``path`` (a model or adapter directory), always with a chat template.

    A tokenizer saved without one gets GLM-4-9B-chat's own template (helpers/glm4_chat_template.jinja),
    so base and chat model render conversations identically.
    """
    from transformers import AutoTokenizer

    from helpers.tiny import TEMPLATE_FILE

    path = resolve(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise missing_error(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        tokenizer.chat_template = TEMPLATE_FILE.read_text(encoding="utf-8")
    return tokenizer


def check_device(profile) -> None:
    """Raise a one-sentence CourseError unless this machine has the device and dtype the profile needs."""
    if profile.device != "cuda":
        return
    from helpers.env import gpu_info

    gpu = gpu_info()
    if gpu is None:
        raise CourseError(f"profile {profile.name} needs a CUDA GPU and none was found: "
                          "set PROFILE = \"tiny\" (--profile tiny on the command line) to run on the CPU.")
    if profile.dtype == "bfloat16" and not gpu["bf16"]:
        raise CourseError(f"{gpu['name']} has no bf16, which GLM-4 needs: use a GPU that has it "
                          "(A100, RTX 30/40, H100), or set PROFILE = \"tiny\".")


def load_model(profile, which: str = "base"):
    """(model, tokenizer) for the profile's base or chat model, in eval mode on the profile's device."""
    if which not in ("base", "chat"):
        raise CourseError(f"unknown model {which!r}: use which=\"base\" or which=\"chat\".")
    path = profile.model_dir if which == "base" else profile.chat_model_dir
    if path is None:
        raise CourseError(f"profile {profile.name} has no chat model (fine-tuning makes one in notebook 04): "
                          "use which=\"base\", or set PROFILE = \"glm4-9b\" on a GPU to compare with glm-4-9b-chat-hf.")
    model = load_weights(profile, path)
    return model, load_tokenizer(path)


def load_weights(profile, path=None):
    """The model at ``path`` (default: the profile's base) in the profile's dtype, device and
    quantization, in eval mode; after the device, bitsandbytes and weights checks."""
    path = resolve(path) if path is not None else profile.model_dir
    check_device(profile)
    if profile.load_in_4bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise CourseError(f"profile {profile.name} loads 4-bit weights with bitsandbytes, which is not "
                              "installed: run `.venv/bin/pip install -e \".[qlora]\"`.")
    if not (path / "config.json").is_file():
        raise missing_error(path)

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=getattr(torch, profile.dtype),
        device_map=profile.device if profile.device == "cuda" else None,
        quantization_config=quantization_config(profile),
    )
    return model.eval()


def quantization_config(profile):
    """4-bit NF4 with bf16 compute for a QLoRA profile (bitsandbytes), else None."""
    if not profile.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # 4-bit levels placed for normally distributed weights
        bnb_4bit_use_double_quant=True,  # quantise the quantisation scales too: about 0.4 GB less
        bnb_4bit_compute_dtype=getattr(torch, profile.dtype),
    )


def end_token_ids(tokenizer) -> list[int]:
    """GLM-4's three end ids: <|endoftext|>, <|user|>, <|observation|>. Generation stops on any of them."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS]
    unknown = [t for t, i in zip(END_TOKENS, ids) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise CourseError(f"this tokenizer has no {unknown[0]} token: load a GLM-4 tokenizer.")
    return ids


def weights_memory_gb(model) -> float:
    """Memory taken by the model's parameters and buffers, in GiB (1024**3 bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1024**3


def parameter_kind(name: str) -> str:
    """Which kind of module a parameter name belongs to (see KINDS)."""
    if "lora_" in name:
        return "lora"
    if "embed_tokens" in name:
        return "embeddings"
    if "lm_head" in name:
        return "lm_head"
    if "self_attn" in name:
        return "attention"  # q_proj, k_proj, v_proj (with bias), o_proj
    if ".mlp." in name:
        return "mlp"  # gate_up_proj (gate and up fused), down_proj
    if "norm" in name:
        return "norms"
    return "other"


def count_parameters(model) -> dict[str, int]:
    """Parameter counts by kind of module, plus ``total``; kinds the model lacks are left out."""
    counts = dict.fromkeys(KINDS, 0)
    for name, param in model.named_parameters():
        counts[parameter_kind(name)] += param.numel()
    counts = {k: v for k, v in counts.items() if v or k in KINDS[:5]}
    counts["total"] = sum(counts.values())
    return counts
