"""Run profiles: every setting a notebook or command line needs, for each size of model.

Taught in notebook 00 (which profile runs here, and why) and notebook 04 (the hyperparameters).
A profile is a frozen dataclass of plain values; ``get_profile("tiny", max_steps=20)`` overrides
fields, and every field is also a flag of ``python -m helpers.train`` (``--max-steps 20``).

    python -m helpers.profiles            # every profile
    python -m helpers.profiles auto       # the one this machine runs, and why
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field

from helpers import CourseError, resolve, run_cli
from helpers.glm4 import LORA_TARGETS
from helpers.memory import estimate, gpu_info

PROFILE_FILE = "profile.json"  # written beside an adapter: the profile that trained it
MACHINE = object()  # auto_profile(gpu=MACHINE): ask this machine's GPU


def _help(text):
    return field(metadata={"help": text})


@dataclass(frozen=True)
class Profile:
    name: str = _help("the profile's name")
    model_path: str = _help("base model directory, relative to the repository root")
    chat_model_path: str | None = _help("the matching chat model, if the profile has one")
    dtype: str = _help("bfloat16 on a GPU (GLM-4 trains in bf16, never fp16), float32 on a CPU")
    device: str = _help("cuda or cpu")
    lora_r: int = _help("rank of the LoRA update B @ A (usual 4-64)")
    lora_alpha: int = _help("the LoRA update is scaled by alpha / r")
    lora_dropout: float = _help("dropout on the LoRA branch's input (usual 0-0.1)")
    lora_target_modules: tuple[str, ...] = _help("linear layers that get LoRA: GLM-4 names only")
    max_length: int = _help("tokens per example (or packed row); longer examples are dropped, never cut")
    batch_size: int = _help("examples (or packed rows) per device and step")
    grad_accum: int = _help("steps whose gradients are summed before each optimizer update")
    learning_rate: float = _help("peak learning rate, reached after a warm-up, then cosine decay")
    num_epochs: float = _help("passes over the training data")
    max_steps: int = _help("-1: run num_epochs; more than 0 overrides it")
    eval_steps: int = _help("evaluate (and answer the prediction prompts) every N steps")
    save_steps: int = _help("write a checkpoint every N steps")
    logging_steps: int = _help("log the training loss every N steps")
    output_dir: str = _help("where checkpoints and the adapter go")
    seed: int = field(default=42, metadata={"help": "random seed for LoRA initialisation and data order"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4-bit NF4 (bitsandbytes)"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest answer when chatting and measuring"})
    packing: bool = field(default=False, metadata={"help": "BFD-pack whole examples into rows of max_length"})
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass: less memory, more compute"})

    @property
    def model_dir(self):
        return resolve(self.model_path)

    @property
    def chat_model_dir(self):
        return resolve(self.chat_model_path) if self.chat_model_path else None

    @property
    def output_path(self):
        return resolve(self.output_dir)

    def weights_present(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"{k:<{width}}  {v!r}" for k, v in self.as_dict().items())

    def save(self, directory):
        """Write profile.json into ``directory`` (an adapter or merged model): what made it, and how to load it."""
        path = resolve(directory) / PROFILE_FILE
        path.write_text(json.dumps(self.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory) -> Profile | None:
        """The profile saved in ``directory`` by ``save``, or None; unknown keys are ignored."""
        path = resolve(directory) / PROFILE_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


# The real course: the original tutorial's hyperparameters, its examples packed instead of padded.
_GLM4_9B = Profile(
    name="glm4-9b",
    model_path="weights/glm-4-9b-hf",
    chat_model_path="weights/glm-4-9b-chat-hf",
    dtype="bfloat16",  # fp16 fine-tuning of GLM-4 gives nan losses (zai-org/GLM-4 issue 96); bf16 keeps fp32's range
    device="cuda",
    lora_r=8,
    lora_alpha=32,
    lora_dropout=0.1,
    lora_target_modules=("q_proj", "k_proj", "v_proj"),
    max_length=512,  # notebook 03 measures how many examples fit whole
    batch_size=2,  # rows of 512 packed tokens: about 1,000 real tokens a step, where the original's
    packing=True,  # 2 padded examples held about 430 (benchmarks/train_throughput.py, gpu_lora.py)
    activation_checkpointing=True,  # the 9B's activations would not fit beside its weights otherwise
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
        lora_target_modules=LORA_TARGETS,  # a tiny model needs every projection to learn a format fast
        max_length=256,
        batch_size=8,
        grad_accum=1,
        learning_rate=3e-3,  # measured here: the tiny model needs a larger step than the 9B's 5e-4
        num_epochs=8.0,  # the sample is small: 8 passes of 77 steps
        max_steps=-1,
        eval_steps=75,
        save_steps=150,
        logging_steps=10,
        output_dir="outputs/lora-tiny",
        max_new_tokens=160,  # the held-out answers are at most 115 tiny tokens
        packing=False,  # packing trains tiny about 20% faster on 2 CPU cores, to the same held-out loss (README):
                        # kept off so that notebook 04's batches are the padded ones notebook 03 shows
    ),
}
FIELDS = tuple(f.name for f in dataclasses.fields(Profile))


def get_profile(name: str = "auto", **overrides) -> Profile:
    """The named profile ("auto" chooses one for this machine), with field overrides applied."""
    if name == "auto":
        profile, reason = auto_profile()
        print(f"profile: {profile.name} ({reason})")
    elif name in PROFILES:
        profile = PROFILES[name]
    else:
        raise CourseError(f"unknown profile {name!r}: choose one of {', '.join(['auto', *PROFILES])}.")
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise CourseError(f"profile has no setting {', '.join(sorted(unknown))}: check the spelling.")
    return dataclasses.replace(profile, **overrides) if overrides else profile


def fitting_profile(gpu_gb: float, bf16: bool = True) -> Profile | None:
    """The larger of the course's GPU profiles whose memory estimate fits ``gpu_gb``, or None."""
    if not bf16:
        return None
    for name in ("glm4-9b", "glm4-9b-qlora"):
        if estimate(PROFILES[name])["total"] <= gpu_gb:
            return PROFILES[name]
    return None


def auto_profile(gpu=MACHINE, bitsandbytes: bool | None = None, weights: bool | None = None) -> tuple[Profile, str]:
    """The largest profile a machine runs, and why: glm4-9b, glm4-9b-qlora, else tiny.

    ``gpu`` describes the machine (``gpu_info()``'s dict, or None for no GPU), ``bitsandbytes`` whether it
    is installed and ``weights`` whether the 9B weights are downloaded; by default each is read from this one.
    """
    import importlib.util

    big = PROFILES["glm4-9b"]
    gpu = gpu_info() if gpu is MACHINE else gpu
    if bitsandbytes is None:
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    if weights is None:
        weights = big.weights_present()
    if gpu is None:
        return PROFILES["tiny"], "no CUDA GPU found, so the tiny model runs on the CPU"
    if not gpu["bf16"]:
        return PROFILES["tiny"], f"{gpu['name']} has no bf16, which GLM-4 needs to train stably"
    if not weights:
        return PROFILES["tiny"], (f"{gpu['name']} found but {big.model_path} is missing: "
                                  "python -m helpers.download glm4-9b")
    fits = fitting_profile(gpu["total_gb"])
    if fits is None:
        return PROFILES["tiny"], (f"{gpu['name']} has {gpu['total_gb']:.0f} GB, less than even 4-bit QLoRA "
                                  f"needs (about {estimate(PROFILES['glm4-9b-qlora'])['total']:.0f} GB)")
    if fits.load_in_4bit and not bitsandbytes:
        return PROFILES["tiny"], (f"{gpu['name']} has {gpu['total_gb']:.0f} GB, enough for 4-bit QLoRA once "
                                  "bitsandbytes is installed: pip install -e \".[qlora]\"")
    return fits, (f"{gpu['name']} with bf16 and {gpu['total_gb']:.0f} GB, enough for {fits.name} "
                  f"(about {estimate(fits)['total']:.0f} GB), and the 9B weights are present")


def machine_profile() -> Profile:
    """How this machine loads a model that came without a profile: the 9B's settings (bf16 on the GPU)
    with a CUDA GPU, tiny's (fp32 on the CPU) without."""
    return PROFILES["glm4-9b" if gpu_info() else "tiny"]


def override_flags():
    """A dataclass with every profile field but ``name`` as an optional flag (None: the profile's value),
    for HfArgumentParser: ``--learning-rate 1e-4``, ``--lora-target-modules q_proj v_proj``."""
    hints = typing.get_type_hints(Profile)
    specs = []
    for f in dataclasses.fields(Profile):
        if f.name == "name":
            continue
        kind = list[str] if f.name == "lora_target_modules" else hints[f.name]
        kind = typing.Optional[typing.get_args(kind)[0] if type(None) in typing.get_args(kind) else kind]
        flag = {"nargs": "?", "const": True} if hints[f.name] is bool else {}  # --packing alone means true
        specs.append((f.name, kind, field(default=None, metadata={"help": f.metadata["help"] + " (default: the profile's)",
                                                                  **flag})))
    return dataclasses.make_dataclass("ProfileFlags", specs)


def main(argv=None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(PROFILES)
    for name in names:
        profile = get_profile(name)
        print(profile.describe())
        if profile.device == "cuda":
            print(f"estimated peak GPU memory: {estimate(profile)['total']:.1f} GB (helpers.memory.estimate)")
        print()
    return 0


if __name__ == "__main__":
    run_cli(main)
