"""Run profiles: every setting a notebook or command line needs, for each size of model.

Taught in notebook 00 (which profile runs and why) and notebook 04 (the hyperparameters).
A profile is a frozen dataclass of plain values; ``replace(profile, max_steps=20)`` overrides.

    python -m helpers.profiles            # print every profile
    python -m helpers.profiles auto       # which one this machine runs, and why
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from helpers import CourseError, resolve, run_cli

GLM4_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class Profile:
    name: str
    model_path: str  # base model, relative to the repository root
    chat_model_path: str | None  # the matching chat model, if the profile has one
    dtype: str  # "bfloat16" on a GPU, "float32" on a CPU
    device: str  # "cuda" or "cpu"
    lora_r: int  # rank of the LoRA update
    lora_alpha: int  # scale: the update is multiplied by alpha / r
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    max_length: int  # tokens per example after the chat template
    batch_size: int  # examples per device and step
    grad_accum: int  # steps summed before each optimizer update
    learning_rate: float
    num_epochs: float
    max_steps: int  # -1: run num_epochs; > 0 overrides it
    eval_steps: int
    save_steps: int
    logging_steps: int
    output_dir: str
    seed: int = 42
    load_in_4bit: bool = False  # QLoRA: NF4 weights, bf16 compute
    max_new_tokens: int = 512  # the longest answer generated when chatting and measuring (notebook 05)
    packing: bool = False  # BFD-pack examples into rows of max_length, no padding; batch_size then counts rows

    @property
    def model_dir(self):
        return resolve(self.model_path)

    @property
    def chat_model_dir(self):
        return resolve(self.chat_model_path) if self.chat_model_path else None

    def weights_present(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, **overrides) -> "Profile":
        """A profile as ``as_dict`` (and course_run.json) wrote it; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in {**values, **overrides}.items() if k in known}
        return cls(**values)

    def describe(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"{k:<{width}}  {v!r}" for k, v in self.as_dict().items())


# The real course: the original tutorial's hyperparameters, its examples packed instead of padded.
_GLM4_9B = Profile(
    name="glm4-9b",
    model_path="weights/glm-4-9b-hf",
    chat_model_path="weights/glm-4-9b-chat-hf",
    dtype="bfloat16",  # fp16 overflows on GLM-4; bf16 keeps fp32's range
    device="cuda",
    lora_r=8,
    lora_alpha=32,
    lora_dropout=0.1,
    lora_target_modules=("q_proj", "k_proj", "v_proj"),
    max_length=512,  # notebook 03 measures how many examples fit whole
    batch_size=2,  # rows of 512 packed tokens: about 1,000 real tokens a step, where the original's
    packing=True,  # 2 padded examples held about 430 (benchmarks/train_throughput.py, gpu_lora.py)
    grad_accum=1,
    learning_rate=5e-4,
    num_epochs=3.0,
    max_steps=-1,
    eval_steps=500,
    save_steps=500,
    logging_steps=10,
    output_dir="outputs/lora-glm4-9b",
)

PROFILES = {
    "glm4-9b": _GLM4_9B,
    # QLoRA: the same recipe on 4-bit NF4 weights (about 6-7 GB instead of 18.8 GB), so a 16 GB GPU
    # fits; dtype stays bf16 as the compute dtype: 4-bit weights are dequantised for each matmul.
    "glm4-9b-qlora": dataclasses.replace(_GLM4_9B, name="glm4-9b-qlora", output_dir="outputs/qlora-glm4-9b",
                                         load_in_4bit=True),
    # A tiny GLM-4 built locally (python -m helpers.tiny): any CPU, offline.
    "tiny": Profile(
        name="tiny",
        model_path="weights/tiny-glm4",
        chat_model_path=None,  # the tiny model has no chat sibling: fine-tuning makes one
        dtype="float32",  # CPUs compute bf16 slowly; the tiny model fits easily in fp32
        device="cpu",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_target_modules=GLM4_LORA_TARGETS,  # a tiny model needs every projection to learn a format fast
        max_length=256,
        batch_size=8,
        grad_accum=1,
        learning_rate=3e-3,  # a tiny model tolerates (and needs) a larger step than the 9B's 5e-4
        num_epochs=8.0,  # the sample is small: 8 passes of 56 steps, about 90 s on 2 CPU cores
        max_steps=-1,
        eval_steps=75,
        save_steps=150,
        logging_steps=10,
        output_dir="outputs/lora-tiny",
        max_new_tokens=160,  # the held-out answers are at most 115 tiny tokens
        packing=False,  # measured: packed rows train the tiny model no faster (notebook 04, step 5)
    ),
}


def get_profile(name: str = "auto", **overrides) -> Profile:
    """The named profile ("auto" chooses one for this machine), with field overrides applied."""
    if name == "auto":
        profile, reason = auto_profile()
        print(f"profile: {profile.name} ({reason})")
    elif name in PROFILES:
        profile = PROFILES[name]
    else:
        raise CourseError(
            f"unknown profile {name!r}: choose one of {', '.join(['auto', *PROFILES])}."
        )
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise CourseError(f"profile has no setting {', '.join(sorted(unknown))}: check the spelling.")
    return dataclasses.replace(profile, **overrides) if overrides else profile


def auto_profile() -> tuple[Profile, str]:
    """The largest profile this machine runs, and why: glm4-9b, glm4-9b-qlora, else tiny."""
    import importlib.util

    from helpers.env import gpu_info
    from helpers.memory import estimate, fitting_profile

    big = PROFILES["glm4-9b"]
    gpu = gpu_info()
    if gpu is None:
        return PROFILES["tiny"], "no CUDA GPU found, so the tiny model runs on the CPU"
    if not gpu["bf16"]:
        return PROFILES["tiny"], f"{gpu['name']} has no bf16, which GLM-4 needs to train stably"
    if not big.weights_present():
        return PROFILES["tiny"], (f"{gpu['name']} found but {big.model_path} is missing: "
                                  "python -m helpers.download glm4-9b")
    fits = fitting_profile(gpu["total_gb"])
    if fits is None:
        return PROFILES["tiny"], (f"{gpu['name']} has {gpu['total_gb']:.0f} GB, less than even 4-bit QLoRA "
                                  f"needs (about {estimate(PROFILES['glm4-9b-qlora'])['total']:.0f} GB)")
    if fits.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        return PROFILES["tiny"], (f"{gpu['name']} has {gpu['total_gb']:.0f} GB, enough for 4-bit QLoRA once "
                                  "bitsandbytes is installed: pip install -e \".[qlora]\"")
    return fits, (f"{gpu['name']} with bf16 and {gpu['total_gb']:.0f} GB, enough for {fits.name} "
                  f"(about {estimate(fits)['total']:.0f} GB), and the 9B weights are present")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        for name in args:
            print(get_profile(name).describe(), end="\n\n")
    else:
        for profile in PROFILES.values():
            print(profile.describe(), end="\n\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
