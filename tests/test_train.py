"""Training: the command line trains, tracks and saves; bad input stops early; YAML; resume, divergence, DDP."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import run_main, run_module
from helpers import CourseError, REPO_ROOT
from helpers.checks import check_output_dir, complete_checkpoints
from helpers.data import load_alpaca
from helpers.profiles import PROFILES, get_profile
from helpers.train import RunArgs, main, train

QUICK = dict(max_steps=4, eval_steps=2, save_steps=2, logging_steps=1)  # mechanics need a few steps, not a run


def quick_profile(output_dir, **overrides):
    return get_profile("tiny", **{**QUICK, "output_dir": str(output_dir), **overrides})


OFF = RunArgs(profile="tiny", tracking="disabled")


def results(output_dir):
    return json.loads((output_dir / "all_results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_command_line_trains_tracks_locally_and_saves(tmp_path, tiny_dir):
    out, swanlog = tmp_path / "run", tmp_path / "swanlog"
    result = run_module("helpers.train", "--profile", "tiny", "--max-steps", "4", "--eval-steps", "2",
                        "--save-steps", "2", "--logging-steps", "1", "--output-dir", str(out), "--tracking", "local",
                        env={"SWANLAB_LOG_DIR": str(swanlog)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "profile.json", "all_results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    assert saved["name"] == "tiny" and saved["max_steps"] == 4 and saved["output_dir"] == str(out)
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


def test_an_output_dir_with_another_run_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    code, _, err = run_main(main, "--profile", "tiny", "--output-dir", str(out), "--tracking", "disabled")
    assert code == 2 and "already holds a trained adapter" in err and "--resume" in err and "Traceback" not in err
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"


def test_9b_profile_without_a_gpu_stops_before_loading(monkeypatch):
    monkeypatch.setattr("helpers.checks.gpu_info", lambda: None)  # no GPU seen, whatever this machine has
    code, _, err = run_main(main, "--profile", "glm4-9b")
    assert code == 2 and "needs a CUDA GPU" in err and "--profile tiny" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_data_stops_before_loading(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "你好", "input": ""}]', encoding="utf-8")
    code, _, err = run_main(main, "--profile", "tiny", "--data", str(bad), "--output-dir", str(tmp_path / "x"),
                            "--tracking", "disabled")
    assert code == 2 and "row 1: has no 'output' field" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_yaml_config_is_parsed_like_flags_and_trains(tmp_path, tiny_dir):
    config = tmp_path / "run.yaml"
    # 5e-4 is a string to YAML 1.1 (no dot): parsed as a flag it is the float 0.0005
    config.write_text("profile: tiny\nlearning_rate: 5e-4\nmax_steps: 3\neval_steps: 3\nsave_steps: 3\n"
                      "lora_target_modules: [q_proj, v_proj]\npacking: false\ntracking: disabled\n", encoding="utf-8")
    out = tmp_path / "yaml-run"
    code, _, err = run_main(main, "--config", str(config), "--output-dir", str(out), "--max-steps", "2")
    assert code == 0, err[-2000:]
    saved = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    assert saved["learning_rate"] == 0.0005 and saved["lora_target_modules"] == ["q_proj", "v_proj"]
    assert saved["max_steps"] == 2 and results(out)["steps"] == 2  # the command line wins over the file


@pytest.mark.parametrize("content,message", [
    ("profile: tiny\nlearning_rat: 1e-4\n", "unknown setting 'learning_rat' (did you mean 'learning_rate'?)"),
    ("max_steps: 2.5\n", "invalid int value: '2.5'"),
    ("- max_steps\n", "must be a YAML mapping"),
])
def test_a_bad_yaml_config_is_refused_in_one_line(tmp_path, content, message):
    config = tmp_path / "run.yaml"
    config.write_text(content, encoding="utf-8")
    code, _, err = run_main(main, "--config", str(config))
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flags_and_config_files_are_checked():
    code, _, err = run_main(main, "--config", "missing.yaml")
    assert code == 2 and "missing.yaml not found" in err
    code, _, err = run_main(main, "--lr", "3")
    assert code == 2 and "unknown argument --lr" in err
    code, out, _ = run_main(main, "--help")
    assert code == 0 and "--learning-rate" in out and "--model-path" in out


class StopAt(TrainerCallback):
    """Simulates a kill: stop the process right after a step, as Ctrl-C or a lost machine would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, tiny_dir):
    train(quick_profile(tmp_path / "whole"), OFF)
    with pytest.raises(KeyboardInterrupt):
        train(quick_profile(tmp_path / "cut"), OFF, callbacks=[StopAt(3)])
    assert [p.name for p in complete_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = train(quick_profile(tmp_path / "cut"), RunArgs(profile="tiny", tracking="disabled", resume=True))
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
        train(quick_profile(tmp_path / "nan"), OFF, callbacks=[Poison()])
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()  # no broken adapter is saved


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_splits_the_data_and_saves_one_adapter(tmp_path, tiny_dir):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp_cpu.yaml",
           "-m", "helpers.train", "--profile", "tiny", "--max-steps", "2", "--eval-steps", "2", "--save-steps", "2",
           "--output-dir", str(out), "--tracking", "disabled"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    found = results(out)
    # each of the 2 processes trained its own half of the sample in batches of 8: 2 steps of ceil(ceil(n / 2) / 8)
    per_process = -(-len(load_alpaca("sample")) // 2)
    assert found["steps"] == 2 and found["epoch"] == pytest.approx(2 / -(-per_process // 8), rel=1e-3)
    assert (out / "adapter_model.safetensors").is_file() and result.stdout.count("adapter saved to") == 1


def test_the_9b_profiles_pack_and_the_tiny_one_pads():
    from dataclasses import replace

    from helpers.sft import sft_config

    for name in ("glm4-9b", "glm4-9b-qlora"):  # bf16 on a GPU; here its settings are checked on the CPU
        args = sft_config(replace(PROFILES[name], device="cpu", dtype="float32"), "unused")
        assert args.packing is True and args.packing_strategy == "bfd" and args.per_device_train_batch_size == 2
        assert (args.learning_rate, args.max_length, args.num_train_epochs) == (5e-4, 512, 3.0)
    assert sft_config(PROFILES["tiny"], "unused").packing is False


@pytest.mark.slow
def test_packed_training_runs_padding_free(tmp_path, tiny_dir):
    code, _, err = run_main(main, "--profile", "tiny", "--packing", "--max-steps", "2", "--eval-steps", "2",
                            "--save-steps", "2", "--logging-steps", "1", "--output-dir", str(tmp_path / "packed"),
                            "--tracking", "disabled")
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "packed" / "profile.json").read_text(encoding="utf-8"))
    assert saved["packing"] is True and results(tmp_path / "packed")["steps"] == 2
