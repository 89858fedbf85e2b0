"""LoRA SFT of GLM-4 with TRL: the one code path for notebook 04 and the command line.

Taught in notebook 04. Every check a learner can fail (no GPU, no bf16, missing weights, bad data,
an output directory holding another run's adapter) runs before the model is loaded.

    python -m helpers.train --profile tiny
    python -m helpers.train --profile tiny --max-steps 30 --output-dir outputs/try --tracking disabled
    python -m helpers.train --config my_run.yaml --resume      # YAML keys: profile fields and flags below
    accelerate launch --config_file configs/accelerate/ddp.yaml -m helpers.train --profile glm4-9b
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from helpers import CourseError, resolve, run_cli

RUN_FILE = "course_run.json"  # written beside the adapter: the profile and settings that made it
IDENTITY_FILE = "data/identity_zh.json"
PROMPTS = ("你是谁？", "把“今天天气很好”翻译成英文。", "12 乘以 3 等于多少？")  # answered at every evaluation


class TrainingDiverged(CourseError):
    """The loss or the gradients stopped being finite numbers."""


def lora_config(profile):
    """PEFT's LoraConfig from the profile: which matrices get a low-rank update, and how large."""
    from peft import LoraConfig

    return LoraConfig(r=profile.lora_r, lora_alpha=profile.lora_alpha, lora_dropout=profile.lora_dropout,
                      target_modules=list(profile.lora_target_modules), task_type="CAUSAL_LM")


def sft_config(profile, output_dir, report_to="none", **overrides):
    """TRL's SFTConfig from the profile; ``overrides`` set any SFTConfig field directly."""
    from trl import SFTConfig

    on_gpu = profile.device == "cuda"
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=profile.batch_size,
        per_device_eval_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float below 1 is a share of all steps
        num_train_epochs=profile.num_epochs,
        max_steps=profile.max_steps,
        max_length=profile.max_length,
        packing=profile.packing,  # best-fit-decreasing rows of max_length, padding-free: no pad token computed
        packing_strategy="bfd",
        eval_strategy="steps",
        eval_steps=profile.eval_steps,
        save_strategy="steps",
        save_steps=profile.save_steps,
        logging_steps=profile.logging_steps,
        logging_nan_inf_filter=False,  # show a nan loss as nan, never hide it
        bf16=profile.dtype == "bfloat16",
        use_cpu=not on_gpu,
        activation_checkpointing=on_gpu,  # (gradient checkpointing) trades compute for memory: the 9B needs it
        report_to=report_to,
        seed=profile.seed,
        data_seed=profile.seed,
        dataloader_num_workers=0,
        disable_tqdm=not sys.stderr.isatty(),  # no progress bars in logs and papermill outputs
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def complete_checkpoints(output_dir) -> list[Path]:
    """Checkpoints the Trainer finished writing (trainer_state.json comes last), oldest first.

    A checkpoint a kill left half-written is skipped with a warning, never loaded.
    """
    found = []
    for path in sorted(resolve(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                       if p.name.split("-")[-1].isdigit() else -1):
        needed = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
        missing = [n for n in needed if not (path / n).is_file()]
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
            print(f"--resume: {output_dir} does not exist yet, so training starts from the beginning")
        return None
    checkpoints = complete_checkpoints(output_dir)
    holds_run = (output_dir / "adapter_config.json").is_file() or any(output_dir.glob("checkpoint-*"))
    if resume:
        if not checkpoints:
            print(f"--resume: no complete checkpoint in {output_dir}, so training starts from the beginning")
        return checkpoints[-1] if checkpoints else None
    if holds_run:
        raise CourseError(f"{output_dir} already holds a trained adapter or checkpoints: resume it with "
                          "--resume (RESUME = True), choose another --output-dir, or delete that directory.")
    return None


class PredictionCallback(TrainerCallback):
    """Answers fixed prompts at each evaluation, keeps them, and logs them to SwanLab when a run is active."""

    def __init__(self, tokenizer, prompts=PROMPTS, max_new_tokens=48):
        self.tokenizer, self.prompts, self.max_new_tokens = tokenizer, list(prompts), max_new_tokens
        self.history: list[dict] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        from helpers import tracking

        answers = generate_answers(model, self.tokenizer, self.prompts, self.max_new_tokens)
        for prompt, (answer, stopped) in zip(self.prompts, answers):
            self.history.append({"step": state.global_step, "prompt": prompt, "answer": answer, "stopped": stopped})
        tracking.log_texts("predictions", [f"{p}\n→ {a}" for p, (a, _) in zip(self.prompts, answers)],
                           state.global_step)


class DivergenceCallback(TrainerCallback):
    """Stops training the moment the loss or the LoRA gradients are not finite (nan or inf)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.float().norm() for g in grads]).sum()):
            raise TrainingDiverged(
                f"the gradients became nan or inf at step {state.global_step + 1}: lower the learning rate "
                f"(now {args.learning_rate:g}), keep bf16 rather than fp16, and resume from the last checkpoint "
                "with --resume.")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingDiverged(f"{key} became {value} at step {state.global_step}: lower the learning rate "
                                       f"(now {args.learning_rate:g}) and resume from the last checkpoint with --resume.")


class RecordingCollator:
    """TRL's collator, noting a checksum of every training example it batches: which data this process saw.

    Under ``accelerate launch`` each process writes its list to ``data_shards/rank-N.json`` in the output
    directory, so you can see that data parallelism gave every GPU a different share of the data.
    Evaluation batches pass through the same collator; only examples of the training set are noted.
    """

    def __init__(self, pad_token_id: int, train_set):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
        self.train_checksums = {self.checksum(ids) for ids in train_set["input_ids"]}
        self.seen: list[int] = []

    @staticmethod
    def checksum(input_ids) -> int:
        import zlib

        return zlib.crc32(bytes(str(list(input_ids)), "ascii"))

    def __call__(self, examples):
        sums = (self.checksum(e["input_ids"]) for e in examples)
        self.seen.extend(s for s in sums if s in self.train_checksums)
        return self.inner(examples)

    def write(self, output_dir, rank: int = 0) -> Path:
        path = resolve(output_dir) / "data_shards" / f"rank-{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"examples": len(self.seen), "checksums": self.seen}) + "\n", encoding="utf-8")
        return path


def run_record(adapter_dir) -> dict:
    """course_run.json of an adapter: the profile, settings and metrics that made it ({} if absent)."""
    path = resolve(adapter_dir) / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def generate_answers(model, tokenizer, prompts, max_new_tokens=48) -> list[tuple[str, bool]]:
    """Greedy (answer, ended on an end id) for each user prompt, through the chat template."""
    from helpers.chat import reply_batch

    was_training = model.training
    model.eval()
    answers = reply_batch(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens)
    if was_training:
        model.train()
    return answers


def load_training_data(data: str, tokenizer, max_length: int, identity: bool = True):
    """Prepared train and eval datasets; the course's identity rows join any data but the sample."""
    from datasets import concatenate_datasets

    from helpers.data import load_alpaca
    from helpers.formatting import prepare

    train_rows, eval_rows = load_alpaca(data), load_alpaca(data, split="test")
    if identity and data != "sample":  # the sample already holds them
        train_rows = concatenate_datasets([train_rows, load_alpaca(IDENTITY_FILE, split="all")])
    train, train_stats = prepare(train_rows, tokenizer, max_length, verbose=False)
    evaluation, eval_stats = prepare(eval_rows, tokenizer, max_length, verbose=False)
    print(f"train: {train_stats}\neval:  {eval_stats}")
    if not len(train) or not len(evaluation):
        raise CourseError(f"no example of {data!r} fits in max_length {max_length}: raise max_length.")
    return train, evaluation


@dataclass
class TrainResult:
    adapter_dir: Path
    eval_loss_before: float | None  # None when resumed: the start was measured by the first run
    eval_loss_after: float
    log_history: list = field(default_factory=list)
    predictions: list = field(default_factory=list)
    trainable_parameters: int = 0
    train_seconds: float = 0.0
    steps: int = 0
    tracking: str = "disabled"


def recording_collator(profile, tokenizer, train_set):
    """A RecordingCollator, or None (TRL's own padding-free collator) when the profile packs examples."""
    return None if profile.packing else RecordingCollator(tokenizer.pad_token_id, train_set)


def build_trainer(profile, train_set, eval_set, output_dir, tracking_mode="disabled", prompts=PROMPTS,
                  callbacks=(), **overrides):
    """Load the base model and wrap it in an SFTTrainer with LoRA, prediction and divergence callbacks."""
    from datasets.utils import logging as ds_logging
    from trl import SFTTrainer

    from helpers.models import load_model

    model, tokenizer = load_model(profile)
    args = sft_config(profile, output_dir, report_to="none" if tracking_mode == "disabled" else ["swanlab"],
                      **overrides)
    predictions = PredictionCallback(tokenizer, prompts)
    ds_logging.disable_progress_bar()  # TRL's checks of our already prepared data need no progress bars
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=lora_config(profile),
                         data_collator=recording_collator(profile, tokenizer, train_set),
                         callbacks=[predictions, DivergenceCallback(), *callbacks])
    ds_logging.enable_progress_bar()
    return trainer, predictions


def save_run(trainer, profile, output_dir, settings: dict, metrics: dict) -> Path:
    """The adapter, tokenizer and chat template, and course_run.json: what made this adapter."""
    output_dir = resolve(output_dir)
    trainer.save_model(str(output_dir))  # adapter weights + config, tokenizer and chat template
    if trainer.args.should_save:
        record = {"profile": profile.as_dict(), "settings": settings, "metrics": metrics,
                  "base_model": profile.model_path}
        (output_dir / RUN_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return output_dir


def preflight(profile, output_dir, resume: bool = False) -> Path | None:
    """Every cheap check before the model loads; returns the checkpoint to resume from, if any.

    A CUDA profile needs a GPU with bf16 and enough memory for its estimate; the weights must be
    there; the output directory must not hold another run's adapter (unless resuming).
    """
    from helpers.models import check_device, missing_error

    check_device(profile)
    if profile.device == "cuda":
        from helpers.env import gpu_info
        from helpers.memory import check_fits

        check_fits(profile, gpu_info()["total_gb"])
    if not profile.weights_present():
        raise missing_error(profile.model_dir)
    return check_output_dir(output_dir, resume)


def train(profile, data: str = "sample", output_dir=None, resume: bool = False, tracking: str = "auto",
          identity: bool = True, prompts=PROMPTS, callbacks=(), **overrides) -> TrainResult:
    """Fine-tune the profile's base model with LoRA and save the adapter; see the module docstring."""
    from helpers import tracking as track
    from helpers.models import load_tokenizer

    output_dir = resolve(output_dir or profile.output_dir)
    checkpoint = preflight(profile, output_dir, resume)
    mode, why = track.resolve_mode(tracking)
    tokenizer = load_tokenizer(profile.model_dir)
    train_set, eval_set = load_training_data(data, tokenizer, profile.max_length, identity)

    settings = {"data": data, "output_dir": str(output_dir), "identity": identity, "tracking": mode, **overrides}
    run = track.start_run(mode, "glm4-lora-course", f"{profile.name}-{output_dir.name}",
                          {**profile.as_dict(), **settings}) if _is_main_process() else None
    if run is not None:
        print(f"tracking: SwanLab {mode} ({why})" + ("; open it with `swanlab watch swanlog`" if mode == "local" else ""))
    trainer, predictions = build_trainer(profile, train_set, eval_set, output_dir, mode, prompts, callbacks,
                                         **overrides)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    try:
        before = trainer.evaluate()["eval_loss"] if checkpoint is None else None
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - start
        after = trainer.evaluate()["eval_loss"]
        metrics = {"eval_loss_before": before, "eval_loss_after": after, "train_seconds": round(seconds, 1),
                   "steps": trainer.state.global_step, "trainable_parameters": trainable}
        adapter_dir = save_run(trainer, profile, output_dir, settings, metrics)
        if isinstance(trainer.data_collator, RecordingCollator):  # packed rows mix examples: nothing to record
            trainer.data_collator.write(output_dir, trainer.args.process_index)
    finally:
        track.finish()
    return TrainResult(adapter_dir, before, after, trainer.state.log_history, predictions.history, trainable,
                       seconds, trainer.state.global_step, mode)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process  # rank 0 under accelerate launch; True in a single process


def main(argv=None) -> int:
    import yaml

    from helpers.profiles import PROFILES, get_profile

    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a YAML file of profile fields and the options below")
    parser.add_argument("--profile", help="auto, " + ", ".join(PROFILES) + " (default auto)")
    parser.add_argument("--data", help="sample (default), a .json/.jsonl file, or a hub id")
    parser.add_argument("--output-dir", help="where checkpoints and the adapter go (default: the profile's)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from the last complete checkpoint")
    parser.add_argument("--tracking", choices=("auto", "cloud", "local", "offline", "disabled"))
    parser.add_argument("--no-identity", dest="identity", action="store_false", default=None,
                        help="do not add data/identity_zh.json to non-sample data")
    for name in ("max_steps", "num_epochs", "learning_rate", "batch_size", "grad_accum", "max_length", "eval_steps",
                 "save_steps", "logging_steps", "lora_r", "lora_alpha", "lora_dropout", "seed"):
        kind = float if name in ("num_epochs", "learning_rate", "lora_dropout") else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                        help="BFD-pack examples into rows of max_length (default: the profile's)")
    args = vars(parser.parse_args(argv))

    config, config_path = {}, args.pop("config")
    if config_path:
        path = resolve(config_path)
        if not path.is_file():
            raise CourseError(f"{path} not found: check the --config path.")
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise CourseError(f"{path} must be a YAML mapping of settings, such as `max_steps: 50`.")
    settings = {**config, **{k: v for k, v in args.items() if v is not None}}
    run_keys = {"profile", "data", "output_dir", "resume", "tracking", "identity"}
    profile = get_profile(settings.pop("profile", "auto"), **{k: v for k, v in settings.items() if k not in run_keys})
    run = {k: settings[k] for k in run_keys - {"profile"} if k in settings}
    result = train(profile, **run)
    if _is_main_process():
        before = "resumed" if result.eval_loss_before is None else f"{result.eval_loss_before:.3f}"
        print(f"eval loss {before} -> {result.eval_loss_after:.3f} after {result.steps} steps "
              f"({result.train_seconds:.0f} s); adapter saved to {result.adapter_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
