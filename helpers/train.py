"""LoRA SFT of GLM-4 from the command line: a recipe file, trained by TRL's ``SFTTrainer`` as notebook 04 trains.

A recipe (configs/*.yaml) is TRL's own settings: ``SFTConfig`` and ``ModelConfig`` fields, plus the course's few
script arguments. TRL's ``TrlParser`` reads it, as ``trl sft`` does, and every key is also a flag of the same name
(``--learning_rate 1e-4``, ``--lora_r 4``, ``--model_name_or_path DIR``); flags win over the file, and a key or flag
no dataclass has is refused in one line. Every check a learner can fail (this machine, missing weights, bad data, an
output directory holding another run's adapter) runs before the model is loaded.

    python -m helpers.train                                          # the recipe auto picks for this machine
    python -m helpers.train --config configs/tiny.yaml --max_steps 30 --output_dir outputs/try --tracking disabled
    python -m helpers.train --config configs/tiny.yaml --resume true
    python -m helpers.train --config configs/glm4-9b-qlora.yaml --model_name_or_path weights/tiny-glm4 --use_cpu true \\
        --max_steps 5 --output_dir outputs/rehearsal-qlora             # the GPU recipe, rehearsed on the CPU
    python -m helpers.train --config configs/tiny.yaml --export_for_trl runs/trl   # then: trl sft --config runs/trl/tiny.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml -m helpers.train --config configs/glm4-9b.yaml
"""

import dataclasses
import difflib
import enum
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback, TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser, get_peft_config, get_quantization_config

from helpers import CourseError, resolve, run_cli, shown
from helpers.checks import check_output_dir, preflight
from helpers.data import IDENTITY, load_alpaca
from helpers.formatting import prepare_dataset
from helpers.machine import choose
from helpers.recipes import CourseArguments, Recipe, read_recipe
from helpers.sft import DivergenceCallback, PredictionCallback, TrainingDiverged, identity_in_conversations
from helpers.tracking import start_tracking


PATHS = ("model_name_or_path", "output_dir", "chat_template_path")  # relative to the repository root in a recipe


class Parser(TrlParser):
    """TRL's parser, refusing in one line what it would print a usage message for or reject with a traceback."""

    def error(self, message):
        raise CourseError(f"{message}: see `python -m helpers.train --help`.")

    def set_defaults_with_config(self, **settings):
        known = {action.dest for action in self._actions}
        for key in settings:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                raise CourseError(f"the recipe has an unknown setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near
                                  else "") + ": TRL's SFTConfig and ModelConfig have no such field.")
        # a value is parsed as a flag's text would be: 5e-4 (a string to YAML) becomes a float, 2.5 is no int
        text = {key: value if isinstance(value, list) or value is None else str(value) for key, value in settings.items()}
        return super().set_defaults_with_config(**text)


def recipe_path(argv: list[str]) -> tuple[Path, list[str]]:
    """The recipe file ``--config`` names (a path, a recipe name, or auto when left out) and the other flags."""
    argv = list(argv)
    config = "auto"
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise CourseError("--config needs a recipe: a name such as tiny, or a .yaml file.")
        config = argv.pop(at + 1)
        argv.pop(at)
    if config == "auto":
        recipe, reason = choose()
        print(f"recipe: {recipe.name} ({reason})")
        config = recipe.name
    read_recipe(config)  # one sentence for an unknown name, a missing file, or a file that is not a mapping
    return (resolve(config) if config.endswith((".yaml", ".yml")) else resolve(f"configs/{config}.yaml")), argv


def parse(argv) -> tuple[Recipe, CourseArguments, SFTConfig, ModelConfig]:
    """The recipe as it will run (the file's settings and the flags given), and TRL's three parsed dataclasses.

    The recipe is checked against this machine (``helpers.machine.fits``) and its weights before the dataclasses are
    built: ``SFTConfig`` itself refuses bf16 without a GPU, with a traceback instead of the fix."""
    import yaml

    path, flags = recipe_path(argv)
    parser = Parser((CourseArguments, SFTConfig, ModelConfig), prog="python -m helpers.train", allow_abbrev=False,
                    description=__doc__.split("\n")[0])
    parser.set_defaults_with_config(**yaml.safe_load(path.read_text(encoding="utf-8")))  # as --config would
    namespace, unknown = parser.parse_known_args(flags)
    if unknown:
        raise CourseError(f"unknown argument {unknown[0]}: see `python -m helpers.train --help`.")
    plain = lambda value: value.value if isinstance(value, enum.Enum) else value  # noqa: E731
    options = parser._option_string_actions  # --lora_r and its alias --lora-r: one setting
    given = [options[flag.split("=")[0]].dest for flag in flags if flag.split("=")[0] in options]
    keys = dict.fromkeys([*read_recipe(path), *given])  # the file's settings, then those the command line adds
    recipe = Recipe(path.stem, {key: plain(getattr(namespace, key)) for key in keys})
    preflight(recipe)  # this machine (fits) and the weights, before SFTConfig refuses bf16 with a traceback
    course, training_args, model_args = parser.parse_args_into_dataclasses(args=flags)
    if course.early_stopping_patience and not training_args.metric_for_best_model:  # else an assert deep in training
        raise CourseError("early_stopping_patience stops on a metric: add --metric_for_best_model eval_loss (and "
                          "--load_best_model_at_end true to keep the best checkpoint's weights).")
    for name in PATHS:  # the recipe writes them from the repository root; the run may start anywhere
        for args in (training_args, model_args):
            if getattr(args, name, None):
                setattr(args, name, str(resolve(getattr(args, name))))
    return recipe, course, training_args, model_args


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


def training_rows(course: CourseArguments, tokenizer, max_length: int, seed: int):
    """The training and evaluation examples of a recipe, prepared as notebook 04 prepares them: the data's rows, and
    the course's identity rows joined (to its sample by default), each once alone and once inside a conversation
    beside another task; ``identity_share`` sets the share of these identity examples."""
    from datasets import concatenate_datasets

    rows = load_alpaca(course.data)
    train_set = prepare_dataset(rows, tokenizer, max_length)
    if course.data == "sample" if course.identity is None else course.identity:  # who the assistant is
        identity = load_alpaca(IDENTITY, split="all")
        if course.identity_share is not None:  # identity examples (rows and conversations) make up this share
            wanted = round(course.identity_share / (1 - course.identity_share) * len(train_set) / 2)
            identity = identity.shuffle(seed=seed).select([i % len(identity) for i in range(wanted)])  # repeats if few
        try:
            talks = identity_in_conversations(identity, rows, seed)  # each asked again, beside another task
        except ValueError as err:  # the data holds conversations only
            raise CourseError(str(err)) from None
        train_set = concatenate_datasets([train_set, *(prepare_dataset(d, tokenizer, max_length) for d in (identity, talks))])
    eval_set = prepare_dataset(load_alpaca(course.data, split="test"), tokenizer, max_length)
    if not len(train_set) or not len(eval_set):
        raise CourseError(f"no example of {course.data!r} fits in max_length {max_length}: raise --max_length.")
    return train_set, eval_set


def export_for_trl(recipe: Recipe, train_set, eval_set, directory, max_length) -> Path:
    """The recipe as TRL's own `trl sft` runs it: TRL's keys only, paths made absolute, and its training and evaluation
    rows as `messages` JSONL beside it (`dataset_name`). TRL then tokenizes them itself, and cuts rows longer than
    `max_length` where the course drops them: the one `train` gives SFTTrainer, None when padding-free without packing."""
    import yaml

    out = resolve(directory)
    for split, rows in (("train", train_set), ("test", eval_set)):
        rows.select_columns(["messages", "tools"]).to_json(out / "data" / f"{split}.jsonl", force_ascii=False)
    course = {f.name for f in dataclasses.fields(CourseArguments)}
    values = {key: str(recipe.path(key)) if key in PATHS else value for key, value in recipe.items() if key not in course}
    values["max_length"] = max_length
    path = out / f"{recipe.name}.yaml"
    path.write_text(yaml.safe_dump({**values, "dataset_name": str(out / "data")}, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    print(f"wrote {shown(path)} and its data: trl sft --config {shown(path)}")
    return path


def final_eval_loss(trainer) -> float:
    """The eval loss of the adapter as training left it. With step- or epoch-wise evaluation, transformers has just
    evaluated at the last step (it does so at the end of training too), so that number is read, not measured twice;
    with ``load_best_model_at_end`` the model is the best checkpoint's, and is measured again."""
    last = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
    if last is not None and last["step"] == trainer.state.global_step and not trainer.args.load_best_model_at_end:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def train(recipe: Recipe, course: CourseArguments, training_args: SFTConfig, model_args: ModelConfig,
          callbacks=()) -> dict:
    """Fine-tune the recipe's base with LoRA, as notebook 04 does, and save the adapter; returns the metrics."""
    from accelerate import PartialState
    from datasets import disable_progress_bars
    from trl import SFTTrainer

    output_dir = Path(training_args.output_dir)
    checkpoint = None if course.export_for_trl else check_output_dir(output_dir, course.resume)  # parse checked the rest
    disable_progress_bars()  # a log file needs no progress bars
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    tokenizer.chat_template = Path(training_args.chat_template_path).read_text(encoding="utf-8")  # as TRL sets it
    train_set, eval_set = training_rows(course, tokenizer, training_args.max_length, training_args.seed)
    if training_args.padding_free and not training_args.packing:  # TRL enforces max_length only by packing, and
        training_args.max_length = None  # refuses it otherwise: the rows above are already at most max_length long
    if course.export_for_trl:
        return {"exported": str(export_for_trl(recipe, train_set, eval_set, course.export_for_trl,
                                               training_args.max_length))}
    main_process = PartialState().is_main_process  # rank 0 under accelerate launch; True in one process
    mode = start_tracking(course.tracking, f"{recipe.name}-{output_dir.name}", dict(recipe)) if main_process else "disabled"
    training_args.report_to = [] if mode == "disabled" else ["swanlab"]
    training_args.disable_tqdm = not sys.stderr.isatty()  # in a log file, one line per log instead of bars
    training_args.model_init_kwargs = {"dtype": model_args.dtype, **(training_args.model_init_kwargs or {})}
    trainer = SFTTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=train_set,
                         eval_dataset=eval_set, processing_class=tokenizer, peft_config=get_peft_config(model_args),
                         quantization_config=get_quantization_config(model_args),
                         callbacks=[PredictionCallback(tokenizer), DivergenceCallback(), *callbacks,
                                    *([EarlyStoppingCallback(course.early_stopping_patience)]
                                      if course.early_stopping_patience else [])])
    if model_args.load_in_4bit and training_args.use_cpu:  # a CPU rehearsal of the QLoRA recipe
        keep_4bit_trainable(trainer.model)
    if training_args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogLines())
    try:
        before = None if checkpoint else trainer.evaluate()["eval_loss"]  # a resumed run measured it the first time
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - start
        after = final_eval_loss(trainer)
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
        recipe.save(output_dir)  # recipe.yaml: how to load the base this adapter belongs to
        trainer.save_metrics("all", {**result.metrics, **metrics}, combined=False)  # all_results.json
    return metrics


def run(argv, callbacks=()) -> tuple[Recipe, dict]:
    """Parse the command line, then train; returns the recipe as it ran and the metrics."""
    recipe, course, training_args, model_args = parse(argv)
    return recipe, train(recipe, course, training_args, model_args, callbacks)


def main(argv=None) -> int:
    recipe, metrics = run(sys.argv[1:] if argv is None else argv)
    from accelerate import PartialState

    if PartialState().is_main_process and "exported" not in metrics:
        before = "resumed" if metrics["eval_loss_before"] is None else f"{metrics['eval_loss_before']:.3f}"
        print(f"eval loss {before} -> {metrics['eval_loss_after']:.3f} after {metrics['steps']} steps "
              f"({metrics['train_seconds']:.0f} s); adapter saved to {shown(recipe.output_path)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
