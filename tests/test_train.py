"""Training: the recipe on the command line trains, tracks and saves; bad input stops early; resume, divergence, DDP."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import run_main, run_module
from helpers import CourseError, REPO_ROOT
from helpers.checks import check_output_dir, complete_checkpoints
from helpers.data import load_alpaca
from helpers.recipes import Recipe, read_recipe
from helpers.train import main, parse, run

QUICK = ["--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--tracking", "disabled"]


def quick(output_dir, *flags):
    """The tiny recipe for a few steps: mechanics need steps, not a run."""
    return ["--config", "tiny", *QUICK, "--output_dir", str(output_dir), *flags]


def results(output_dir):
    return json.loads((output_dir / "all_results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_command_line_trains_tracks_locally_and_saves(tmp_path, tiny_dir):
    out, swanlog = tmp_path / "run", tmp_path / "swanlog"
    result = run_module("helpers.train", "--config", "configs/tiny.yaml", "--max_steps", "4", "--eval_steps", "2",
                        "--save_steps", "2", "--logging_steps", "1", "--output_dir", str(out), "--tracking", "local",
                        env={"SWANLAB_LOG_DIR": str(swanlog)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "recipe.yaml", "all_results.json"):
        assert (out / name).is_file(), name
    saved = read_recipe(out / "recipe.yaml")
    assert saved["max_steps"] == 4 and saved["output_dir"] == str(out) and saved["tracking"] == "local"
    given = ("max_steps", "eval_steps", "save_steps", "logging_steps", "output_dir", "tracking")  # the flags above
    assert {k: v for k, v in saved.items() if k not in given} == {k: v for k, v in read_recipe("tiny").items()
                                                                 if k not in given}  # the rest as in the file
    found = results(out)
    assert found["steps"] == 4 and found["tracking"] == "local"
    assert found["eval_loss_after"] < found["eval_loss_before"]
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert "swanlab watch" in result.stdout and any(swanlog.rglob("*"))
    # a log file gets one short line per log, not progress bars or raw dicts
    assert "step 3/4  loss " in result.stdout and "{'loss'" not in result.stdout


@pytest.mark.slow  # starts a SwanLab run
def test_prediction_callback_answers_with_and_without_tracking(tmp_path, model, tokenizer, monkeypatch):
    import swanlab
    from transformers import TrainerState
    from trl import SFTConfig

    from helpers.sft import PredictionCallback

    callback = PredictionCallback(tokenizer, ["你是谁？"], max_new_tokens=6)
    state = TrainerState()
    state.global_step = 7
    off = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    callback.on_evaluate(off, state, None, model=model)  # tracking off: answers, logs nothing
    (row,) = callback.history
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "你是谁？"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    new = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=model.generation_config.eos_token_id)
    new = new[0, ids["input_ids"].shape[1]:].tolist()  # the same greedy answer, computed here
    assert row == {"step": 7, "prompt": "你是谁？", "answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
                   "stopped": new[-1] in model.generation_config.eos_token_id}
    swanlab.init(mode="local", project="test", log_dir=str(tmp_path / "swanlog"), reinit=True)
    try:
        on = SFTConfig(output_dir=str(tmp_path), report_to="swanlab", use_cpu=True, bf16=False)
        callback.on_evaluate(on, state, None, model=model)  # logs the answers to the active run
    finally:
        swanlab.finish()
    assert len(callback.history) == 2 and any((tmp_path / "swanlog").rglob("*"))


def test_the_flags_are_trls_own_names_and_the_file_is_its_config():
    code, out, _ = run_main(main, "--help")
    assert code == 0
    for flag in ("--config", "--per_device_train_batch_size", "--gradient_accumulation_steps", "--num_train_epochs",
                 "--learning_rate", "--lora_r", "--lora_target_modules", "--model_name_or_path", "--assistant_only_loss"):
        assert flag in out, flag
    for renamed in ("--batch-size", "--batch_size ", "--grad-accum", "--grad_accum", "--num-epochs", "--profile",
                    "--model-path", "--device "):
        assert renamed not in out, renamed
    recipe, course, training_args, model_args = parse(["--config", "tiny", "--learning_rate", "1e-3", "--lora_r=4"])
    assert (training_args.learning_rate, model_args.lora_r, recipe["learning_rate"], recipe["lora_r"]) == (1e-3, 4, 1e-3, 4)
    assert training_args.assistant_only_loss and training_args.per_device_train_batch_size == 8  # from the file
    assert training_args.output_dir == str(REPO_ROOT / "outputs/lora-tiny")  # from the repository root, wherever it runs
    assert course.data == "sample" and course.identity is None and recipe.name == "tiny"


def test_the_training_keys_of_a_recipe_are_an_sft_config_as_they_are():
    from trl import SFTConfig

    values = dict(read_recipe("tiny"))
    training = {k: values[k] for k in values if k in {f.name for f in __import__("dataclasses").fields(SFTConfig)}}
    args = SFTConfig(**training)  # unchanged: the same names and values TRL takes
    assert (args.learning_rate, args.per_device_train_batch_size, args.max_length) == (3e-3, 8, 256)


def test_an_output_dir_with_another_run_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    code, _, err = run_main(main, "--config", "tiny", "--output_dir", str(out), "--tracking", "disabled")
    assert code == 2 and "already holds a trained adapter" in err and "--resume" in err and "Traceback" not in err
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"


def test_9b_recipe_without_a_gpu_stops_before_loading(monkeypatch):
    monkeypatch.setattr("helpers.machine.gpu_info", lambda: None)  # no GPU seen, whatever this machine has
    code, _, err = run_main(main, "--config", "configs/glm4-9b.yaml")
    assert code == 2 and "needs a CUDA GPU" in err and "--config configs/tiny.yaml" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_data_stops_before_loading(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "你好", "input": ""}]', encoding="utf-8")
    code, _, err = run_main(main, "--config", "tiny", "--data", str(bad), "--output_dir", str(tmp_path / "x"),
                            "--tracking", "disabled")
    assert code == 2 and "row 1: has no 'output' field" in err
    assert not (tmp_path / "x").exists()


def test_the_identity_joined_to_conversations_only_stops_in_one_line(tmp_path, tiny_dir):
    talks = tmp_path / "talks.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}]},
                        ensure_ascii=False) for i in range(60)]
    talks.write_text("\n".join(lines), encoding="utf-8")
    code, _, err = run_main(main, "--config", "tiny", "--data", str(talks), "--identity", "true",
                            "--output_dir", str(tmp_path / "x"), "--tracking", "disabled")
    assert code == 2 and "no single question among the tasks" in err  # to ask the identity beside, in conversations
    assert "Traceback" not in err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_recipe_file_of_ones_own_trains_with_flags_winning(tmp_path, tiny_dir):
    config = tmp_path / "mine.yaml"
    # a copy of configs/tiny.yaml with a few keys changed; 5e-4 is a string to YAML 1.1 (no dot): parsed as a flag
    values = {**read_recipe("tiny"), "learning_rate": "5e-4", "max_steps": 3, "eval_steps": 3, "save_steps": 3,
              "lora_target_modules": ["q_proj", "v_proj"], "tracking": "disabled"}
    import yaml

    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    out = tmp_path / "yaml-run"
    code, _, err = run_main(main, "--config", str(config), "--output_dir", str(out), "--max_steps", "2")
    assert code == 0, err[-2000:]
    saved = Recipe.load(out)
    assert saved.name == "mine" and saved["learning_rate"] == 0.0005 and saved["lora_target_modules"] == ["q_proj", "v_proj"]
    assert saved["max_steps"] == 2 and results(out)["steps"] == 2  # the command line wins over the file


@pytest.mark.parametrize("content,message", [
    ("learning_rat: 1e-4\n", "unknown setting 'learning_rat' (did you mean 'learning_rate'?)"),
    ("max_steps: 2.5\n", "invalid int value: '2.5'"),
    ("- max_steps\n", "must be a YAML mapping"),
])
def test_a_bad_recipe_file_is_refused_in_one_line(tmp_path, content, message):
    config = tmp_path / "run.yaml"
    config.write_text(content, encoding="utf-8")
    code, _, err = run_main(main, "--config", str(config))
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flags_and_recipe_names_are_checked():
    code, _, err = run_main(main, "--config", "missing.yaml")
    assert code == 2 and "missing.yaml not found" in err
    code, _, err = run_main(main, "--config", "glm5")
    assert code == 2 and "unknown recipe 'glm5'" in err
    code, _, err = run_main(main, "--config", "tiny", "--lr", "3")
    assert code == 2 and "unknown argument --lr" in err


def test_early_stopping_without_its_metric_is_refused_before_loading():
    code, _, err = run_main(main, "--config", "tiny", "--early_stopping_patience", "2")
    assert code == 2 and "add --metric_for_best_model eval_loss" in err and "Traceback" not in err


class Evaluations(TrainerCallback):
    """The step of every evaluation."""

    def __init__(self):
        self.steps = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.slow
def test_early_stopping_stops_when_eval_loss_stops_improving(tmp_path, tiny_dir):
    # learning rate 0: the second evaluation is no better than the first, and patience 1 ends the run there
    out, evaluations = tmp_path / "early", Evaluations()
    _, found = run(quick(out, "--max_steps", "40", "--learning_rate", "0", "--early_stopping_patience", "1",
                         "--metric_for_best_model", "eval_loss", "--load_best_model_at_end", "true"), callbacks=[evaluations])
    assert found["steps"] == results(out)["steps"] == 4  # evaluated at steps 2 and 4, stopped there, not at 40
    assert evaluations.steps == [0, 2, 4, 4]  # the best checkpoint, loaded at the end, is measured once more


@pytest.mark.slow
def test_trls_own_trl_sft_runs_the_exported_recipe(tmp_path, tiny_dir):
    import subprocess
    import sys

    import yaml

    code, out, err = run_main(main, "--config", "tiny", "--export_for_trl", str(tmp_path / "trl"))
    assert code == 0, err[-2000:]
    exported = yaml.safe_load((tmp_path / "trl" / "tiny.yaml").read_text(encoding="utf-8"))
    assert exported["assistant_only_loss"] is True and "family" not in exported and "data" not in exported
    rows = (tmp_path / "trl" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) > 500 and "messages" in json.loads(rows[0])
    trl = [str(Path(sys.executable).parent / "trl"), "sft", "--config", str(tmp_path / "trl" / "tiny.yaml"),
           "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
           "--output_dir", str(tmp_path / "trl-run")]
    done = subprocess.run(trl, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "trl-run" / "adapter_model.safetensors").is_file()  # TRL's own run saved a LoRA adapter


class StopAt(TrainerCallback):
    """Simulates a kill: stop the process right after a step, as Ctrl-C or a lost machine would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, tiny_dir):
    evaluations = Evaluations()
    run(quick(tmp_path / "whole"), callbacks=[evaluations])
    assert evaluations.steps == [0, 2, 4]  # before training and every 2 steps; the last one is the final eval loss
    with pytest.raises(KeyboardInterrupt):
        run(quick(tmp_path / "cut"), callbacks=[StopAt(3)])
    assert [p.name for p in complete_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    _, resumed = run(quick(tmp_path / "cut", "--resume", "true"))
    assert resumed["steps"] == 4 and resumed["eval_loss_before"] is None
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
    for step, files in ((6, ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")),
                        (12, ("adapter_model.safetensors", "optimizer.pt"))):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        for name in files:
            (ckpt / name).write_bytes(b"x")
    assert check_output_dir(tmp_path, resume=True) == tmp_path / "checkpoint-6"
    assert "skipping checkpoint-12, left incomplete" in capsys.readouterr().out
    with pytest.raises(CourseError, match="already holds"):
        check_output_dir(tmp_path, resume=False)


class Poison(TrainerCallback):
    """Makes one LoRA weight nan after a step, as an overflow would."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))


@pytest.mark.slow
def test_divergence_stops_training_at_once(tmp_path, tiny_dir):
    with pytest.raises(CourseError, match=r"nan or inf at step 4: lower the learning rate"):
        run(quick(tmp_path / "nan"), callbacks=[Poison()])
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()  # no broken adapter is saved


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_splits_the_data_and_saves_one_adapter(tmp_path, tiny_dir):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp_cpu.yaml",
           "-m", "helpers.train", "--config", "tiny", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2",
           "--output_dir", str(out), "--tracking", "disabled"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    found = results(out)
    # each of the 2 processes trained its own half of the sample and identity examples in batches of 8
    per_process = -(-(len(load_alpaca("sample")) + 2 * len(load_alpaca("data/identity_zh.json", split="all"))) // 2)
    assert found["steps"] == 2 and found["epoch"] == pytest.approx(2 / -(-per_process // 8), rel=1e-3)
    assert (out / "adapter_model.safetensors").is_file() and result.stdout.count("adapter saved to") == 1


class Collators(TrainerCallback):
    """Keeps the data collator each training run batches its examples with."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.seen.append(train_dataloader.collate_fn)


@pytest.mark.slow
def test_padding_free_steps_have_the_losses_of_padded_ones(tmp_path, tiny_dir):
    """tiny's default lays each step's 8 examples end to end in one row instead of padding them. Without dropout (whose
    random positions follow the tensors' shape), every step's loss is the padded batch's."""
    collators, losses = Collators(), {}
    for padding_free in ("true", "false"):
        out = tmp_path / padding_free
        run(quick(out, "--padding_free", padding_free, "--lora_dropout", "0"), callbacks=[collators])
        history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
        losses[padding_free] = [row[key] for row in history for key in ("loss", "eval_loss") if key in row]
    assert [c.padding_free for c in collators.seen] == [True, False]  # the recipe's setting, and the flag turning it off
    assert read_recipe("tiny")["padding_free"] is True and len(losses["true"]) == 4 + 2
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


@pytest.mark.slow
def test_packed_training_runs_padding_free(tmp_path, tiny_dir):
    code, _, err = run_main(main, "--config", "tiny", "--packing", "true", "--max_steps", "2", "--eval_steps", "2",
                            "--save_steps", "2", "--logging_steps", "1", "--output_dir", str(tmp_path / "packed"),
                            "--tracking", "disabled")
    assert code == 0, err[-2000:]
    assert read_recipe(tmp_path / "packed" / "recipe.yaml")["packing"] is True
    assert results(tmp_path / "packed")["steps"] == 2


def test_the_recipe_reaches_sft_trainer_through_four_modules_and_never_climbs_back(tmp_path, tiny_dir):
    """Followed from the command line to SFTTrainer, the recipe (and TRL's parsed dataclasses) pass through
    helpers.train, helpers.checks and helpers.machine and then TRL, each calling only further down."""
    import sys

    from trl import ModelConfig, SFTConfig, SFTTrainer

    from helpers.recipes import CourseArguments, Recipe

    kinds, calls = (Recipe, CourseArguments, SFTConfig, ModelConfig), []

    class Reached(Exception):
        pass

    def module(frame):
        name = frame.f_globals.get("__name__", "")
        return name if name.startswith("helpers.") else name.split(".")[0]

    def follow(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code is SFTTrainer.__init__.__code__:
            calls.append((module(frame.f_back), "trl"))
            raise Reached
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(isinstance(frame.f_locals.get(n), kinds) for n in names if n != "self"):  # the recipe handed over
            calls.append((module(frame.f_back), module(frame)))

    sys.setprofile(follow)
    try:
        run(["--config", "tiny", "--output_dir", str(tmp_path / "out"), "--tracking", "disabled"])
    except Reached:
        pass
    finally:
        sys.setprofile(None)
    ours = [(caller, callee) for caller, callee in calls if caller.startswith(("helpers", "trl")) or callee == "trl"]
    modules = list(dict.fromkeys(m for call in ours for m in call))
    assert modules == ["helpers.train", "helpers.checks", "helpers.machine", "trl"], ours
    order = {name: i for i, name in enumerate(modules)}
    assert all(order[callee] >= order[caller] for caller, callee in ours), ours  # never back up to a module it left


def test_swanlabs_folder_is_named_relative_to_where_the_notebook_runs(monkeypatch):
    from helpers.tracking import log_dir

    monkeypatch.delenv("SWANLAB_LOG_DIR", raising=False)
    monkeypatch.chdir(REPO_ROOT / "notebooks")  # papermill and JupyterLab run a notebook in its folder
    assert log_dir() == os.path.join("..", "swanlog")  # what SwanLab prints: no machine's folders
    monkeypatch.chdir(REPO_ROOT)
    assert log_dir() == "swanlog"
    monkeypatch.setenv("SWANLAB_LOG_DIR", "/data/runs")
    assert log_dir() == "/data/runs"
