"""Training: the command line trains, tracks and saves; bad input stops early; resume, divergence, DDP, QLoRA."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import run_module
from helpers import CourseError, REPO_ROOT
from helpers.profiles import PROFILES, get_profile
from helpers.train import TrainingDiverged, check_output_dir, complete_checkpoints, train

QUICK = dict(max_steps=12, eval_steps=6, save_steps=6, logging_steps=3)


def quick_profile(**overrides):
    return get_profile("tiny", **{**QUICK, **overrides})


@pytest.fixture()
def swanlog(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    return tmp_path / "swanlog"


def test_command_line_trains_tracks_locally_and_saves(tmp_path, tiny_dir, swanlog):
    out = tmp_path / "run"
    result = run_module("helpers.train", "--profile", "tiny", "--max-steps", "12", "--eval-steps", "6",
                        "--save-steps", "6", "--output-dir", str(out), "--tracking", "local",
                        env={"SWANLAB_LOG_DIR": str(swanlog)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "course_run.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "course_run.json").read_text(encoding="utf-8"))
    assert run["profile"]["name"] == "tiny" and run["profile"]["max_steps"] == 12
    assert run["metrics"]["steps"] == 12 and run["settings"]["tracking"] == "local"
    assert run["metrics"]["eval_loss_after"] < run["metrics"]["eval_loss_before"]
    assert "swanlab watch" in result.stdout
    assert any(swanlog.rglob("*")), "local mode writes the run under the log directory"
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-6", "checkpoint-12"}


def test_prediction_samples_work_with_tracking_off(tmp_path, tiny_dir):
    result = train(quick_profile(), output_dir=tmp_path / "off", tracking="disabled", prompts=["你是谁？"])
    steps = [p["step"] for p in result.predictions]
    assert 6 in steps and 12 in steps and all(p["prompt"] == "你是谁？" for p in result.predictions)
    assert result.tracking == "disabled" and result.trainable_parameters > 0
    assert [h["eval_loss"] for h in result.log_history if "eval_loss" in h]


def test_an_output_dir_with_another_run_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    result = run_module("helpers.train", "--profile", "tiny", "--output-dir", str(out), "--tracking", "disabled")
    assert result.returncode == 2 and "already holds a trained adapter" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"


def test_9b_profile_without_a_gpu_stops_before_loading():
    result = run_module("helpers.train", "--profile", "glm4-9b")
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr and "--profile tiny" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_data_stops_before_loading(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "你好", "input": ""}]', encoding="utf-8")
    result = run_module("helpers.train", "--profile", "tiny", "--data", str(bad), "--output-dir",
                        str(tmp_path / "x"), "--tracking", "disabled")
    assert result.returncode == 2 and "row 1: has no 'output' field" in result.stderr
    assert not (tmp_path / "x").exists()


def test_yaml_config_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("profile: glm4-9b\nmax_steps: 5\n", encoding="utf-8")
    result = run_module("helpers.train", "--config", str(config))
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr  # the YAML's profile was used
    result = run_module("helpers.train", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr


class StopAt(TrainerCallback):
    """Simulates a kill: stop the process right after a step, as Ctrl-C or a lost machine would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, tiny_dir):
    profile = quick_profile()
    whole = train(profile, output_dir=tmp_path / "whole", tracking="disabled")
    with pytest.raises(KeyboardInterrupt):
        train(profile, output_dir=tmp_path / "cut", tracking="disabled", callbacks=[StopAt(8)])
    assert [p.name for p in complete_checkpoints(tmp_path / "cut")] == ["checkpoint-6"]
    resumed = train(profile, output_dir=tmp_path / "cut", resume=True, tracking="disabled")
    assert resumed.steps == whole.steps == 12
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
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


def test_divergence_stops_training_at_once(tmp_path, tiny_dir):
    with pytest.raises(TrainingDiverged, match=r"nan or inf at step 4: lower the learning rate"):
        train(quick_profile(), output_dir=tmp_path / "nan", tracking="disabled", callbacks=[Poison()])
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()  # no broken adapter is saved


def test_ddp_on_two_cpu_processes_splits_the_data_and_saves_one_adapter(tmp_path, tiny_dir):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp_cpu.yaml",
           "-m", "helpers.train", "--profile", "tiny", "--max-steps", "6", "--eval-steps", "6", "--save-steps", "6",
           "--output-dir", str(out), "--tracking", "disabled"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [json.loads((out / "data_shards" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    batch = PROFILES["tiny"].batch_size
    # 6 steps of its own batches each (the data loader may fetch one batch ahead)
    assert all(6 * batch <= s["examples"] <= 7 * batch for s in shards)
    overlap = set(shards[0]["checksums"]) & set(shards[1]["checksums"])
    assert len(overlap) <= 1, "the two processes trained on different examples"
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "course_run.json").read_text())["metrics"]["steps"] == 6


def test_qlora_profile_configures_4bit_nf4_and_refuses_a_cpu():
    from helpers.models import load_model, quantization_config

    profile = PROFILES["glm4-9b-qlora"]
    config = quantization_config(profile)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(PROFILES["glm4-9b"]) is None
    with pytest.raises(CourseError, match="needs a CUDA GPU"):
        load_model(profile)


def test_the_9b_profiles_pack_and_the_tiny_one_pads():
    from helpers.train import sft_config

    for name in ("glm4-9b", "glm4-9b-qlora"):
        args = sft_config(PROFILES[name], "unused", bf16=False, use_cpu=True)  # no GPU here
        assert args.packing is True and args.packing_strategy == "bfd" and args.per_device_train_batch_size == 2
    assert sft_config(PROFILES["tiny"], "unused").packing is False


def test_packed_training_runs_padding_free(tmp_path, tiny_dir):
    result = run_module("helpers.train", "--profile", "tiny", "--packing", "--max-steps", "4", "--eval-steps", "4",
                        "--save-steps", "4", "--logging-steps", "2", "--output-dir", str(tmp_path / "packed"),
                        "--tracking", "disabled", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads((tmp_path / "packed" / "course_run.json").read_text(encoding="utf-8"))
    assert run["profile"]["packing"] is True and run["metrics"]["steps"] == 4
    assert not (tmp_path / "packed" / "data_shards").exists()  # packed rows mix examples: nothing to record
