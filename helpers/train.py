"""LoRA SFT of GLM-4 from the command line: notebook 04's recipe, for long, unattended or multi-GPU runs.

Every profile field is a flag (``--learning-rate 1e-4``, ``--lora-r 4``, ``--model-path DIR``);
``--config FILE.yaml`` gives the same settings as YAML keys, parsed exactly as the flags are, and
flags on the command line win. Every check a learner can fail (no GPU, no bf16, missing weights,
bad data, an output directory holding another run's adapter) runs before the model is loaded.

    python -m helpers.train --profile tiny
    python -m helpers.train --profile tiny --max-steps 30 --output-dir outputs/try --tracking disabled
    python -m helpers.train --config my_run.yaml --resume
    python -m helpers.train --profile glm4-9b-qlora --model-path weights/tiny-glm4 --device cpu --max-steps 5  # rehearse
    accelerate launch --config_file configs/accelerate/ddp.yaml -m helpers.train --profile glm4-9b
"""

import dataclasses
import difflib
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from transformers import AutoTokenizer, HfArgumentParser, PrinterCallback, TrainerCallback

from helpers import CourseError, resolve, run_cli, shown
from helpers.checks import preflight
from helpers.data import load_alpaca
from helpers.formatting import prepare_dataset
from helpers.models import load_model
from helpers.profiles import Profile, get_profile, override_flags
from helpers.sft import DivergenceCallback, PredictionCallback, TrainingDiverged, lora_config, sft_config
from helpers.tracking import start_tracking


@dataclass
class RunArgs:
    profile: str = field(default="auto", metadata={"help": "auto, tiny, glm4-9b or glm4-9b-qlora"})
    config: str | None = field(default=None, metadata={"help": "a YAML file of these settings, as key: value"})
    data: str = field(default="sample", metadata={"help": "sample, a .json/.jsonl file, or a hub id"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint"})
    tracking: Literal["auto", "cloud", "local", "offline", "disabled"] = field(
        default="auto", metadata={"help": "SwanLab mode: auto is cloud with an API key, else local"})
    identity: bool = field(default=True, metadata={"help": "add data/identity_zh.json to the training rows"})


class Parser(HfArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; one sentence is enough
        raise CourseError(f"{message}: see `python -m helpers.train --help`.")


def parse(argv) -> tuple[Profile, RunArgs]:
    """The profile and run settings from the command line, after those of ``--config FILE.yaml``."""
    parser = Parser((RunArgs, override_flags()), prog="python -m helpers.train", description=__doc__.split("\n")[0])
    argv = list(argv)
    config = parser.parse_known_args(argv)[0].config
    if config:
        argv = yaml_flags(config, parser) + argv  # the command line comes last, so it wins
    run, flags, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise CourseError(f"unknown argument {unknown[0]}: see `python -m helpers.train --help`.")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in dataclasses.asdict(flags).items() if v is not None}
    return get_profile(run.profile, **overrides), run


def yaml_flags(path, parser) -> list[str]:
    """A YAML mapping of settings as command-line flags, so that its values are parsed (and typed) as flags are."""
    import yaml

    path = resolve(path)
    if not path.is_file():
        raise CourseError(f"{shown(path)} not found: check the --config path.")
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(settings, dict):
        raise CourseError(f"{shown(path)} must be a YAML mapping of settings, such as `max_steps: 50`.")
    known = {a.dest for a in parser._actions} - {"help", "config"}
    flags = []
    for key, value in settings.items():
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            raise CourseError(f"{shown(path)}: unknown setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                              + ": see `python -m helpers.train --help` for every setting.")
        if value is not None:
            values = value if isinstance(value, list) else [value]
            flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return flags


class LogLines(TrainerCallback):
    """One short line per log in a log file (step, loss, grad norm, learning rate), not a raw dict."""

    KEYS = ("loss", "grad_norm", "learning_rate", "eval_loss", "train_loss", "train_runtime")

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = "  ".join(f"{k} {logs[k]:.4g}" for k in self.KEYS if k in (logs or {}))
        if state.is_world_process_zero and values:
            where = f"step {state.global_step}/{state.max_steps}" if state.max_steps else "before training"
            print(f"{where}  {values}", flush=True)


def keep_4bit_trainable(model):
    """bitsandbytes repacks a 4-bit layer for fast CPU inference the first time it runs in eval mode (as the
    evaluation before training does), and that layout cannot be trained afterwards (an in-place bias add on a
    view fails): keep every layer in the trainable layout. Needed on a CPU only; GPUs have no such layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def train(profile: Profile, run: RunArgs, callbacks=()) -> dict:
    """Fine-tune the profile's base with LoRA, as notebook 04 does, and save the adapter; returns the metrics."""
    from accelerate import PartialState
    from datasets import disable_progress_bars
    from trl import SFTTrainer

    output_dir = profile.output_path
    checkpoint = preflight(profile, output_dir, run.resume)
    disable_progress_bars()  # a log file needs no progress bars
    tokenizer = AutoTokenizer.from_pretrained(profile.model_dir)
    train_set = prepare_dataset(load_alpaca(run.data, identity=run.identity), tokenizer, profile.max_length)
    eval_set = prepare_dataset(load_alpaca(run.data, split="test"), tokenizer, profile.max_length)
    if not len(train_set) or not len(eval_set):
        raise CourseError(f"no example of {run.data!r} fits in max_length {profile.max_length}: raise --max-length.")
    main_process = PartialState().is_main_process  # rank 0 under accelerate launch; True in one process
    mode = start_tracking(run.tracking, f"{profile.name}-{output_dir.name}",
                          {**profile.as_dict(), **dataclasses.asdict(run)}) if main_process else "disabled"
    training_args = sft_config(profile, output_dir, report_to="none" if mode == "disabled" else "swanlab")
    training_args.disable_tqdm = not sys.stderr.isatty()  # in a log file, one line per log instead of bars
    model = load_model(profile)
    if profile.load_in_4bit and profile.device == "cpu":  # a CPU rehearsal of the QLoRA recipe
        keep_4bit_trainable(model)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=lora_config(profile),
                         callbacks=[PredictionCallback(tokenizer), DivergenceCallback(), *callbacks])
    if training_args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogLines())
    try:
        before = None if checkpoint else trainer.evaluate()["eval_loss"]  # a resumed run measured it the first time
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - start
        after = trainer.evaluate()["eval_loss"]
    except TrainingDiverged as err:
        raise CourseError(str(err)) from None
    finally:
        if mode != "disabled":
            import swanlab

            swanlab.finish()
    trainer.save_model(str(output_dir))  # the adapter, its config, the tokenizer and chat template
    metrics = {"eval_loss_before": before, "eval_loss_after": after, "steps": trainer.state.global_step,
               "epoch": trainer.state.epoch, "train_seconds": round(seconds, 1), "tracking": mode}
    if trainer.args.should_save:  # the main process writes
        profile.save(output_dir)  # profile.json: how to load the base this adapter belongs to
        trainer.save_metrics("all", {**result.metrics, **metrics}, combined=False)  # all_results.json
    return metrics


def main(argv=None) -> int:
    profile, run = parse(sys.argv[1:] if argv is None else argv)
    metrics = train(profile, run)
    from accelerate import PartialState

    if PartialState().is_main_process:
        before = "resumed" if metrics["eval_loss_before"] is None else f"{metrics['eval_loss_before']:.3f}"
        print(f"eval loss {before} -> {metrics['eval_loss_after']:.3f} after {metrics['steps']} steps "
              f"({metrics['train_seconds']:.0f} s); adapter saved to {shown(profile.output_path)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
