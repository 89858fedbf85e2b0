"""Notebook 04 trains the tiny model headless, tracked locally, and saves the same adapter as the command line."""

import json
import math

import pytest

from helpers.models import load_tokenizer
from helpers.profiles import get_profile
from helpers.train import load_training_data
from helpers.tutorial import run_notebook

from conftest import NB04, outputs_of

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "course_run.json")


def planned_steps(profile) -> int:
    """The Trainer's step count for the sample data: ceil(epochs x batches per epoch), or max_steps."""
    if profile.max_steps > 0:
        return profile.max_steps
    train_set, _ = load_training_data("sample", load_tokenizer(profile.model_dir), profile.max_length)
    per_epoch = math.ceil(math.ceil(len(train_set) / profile.batch_size) / profile.grad_accum)
    return math.ceil(profile.num_epochs * per_epoch)


def test_04_trains_with_the_profile_defaults_and_the_loss_falls(nb04):
    found, _, _ = nb04
    assert found["profile"] == "tiny" and found["resumed_from"] == ""
    assert found["steps"] == found["planned_steps"] == planned_steps(get_profile("tiny"))
    assert found["eval_loss_after"] < found["eval_loss_before"] - 0.5
    losses = [loss for _, loss in found["loss_history"]]
    assert len(losses) >= 10 and losses[-1] < losses[0]


def test_04_uses_the_command_lines_configs_and_counts_parameters(nb04):
    found, _, _ = nb04
    assert found["lora_matches_cli"] is True and found["sft_matches_cli"] is True
    assert found["trainable_9b"] == 5_406_720  # r 8 on q/k/v of GLM-4-9B
    assert 0 < found["trainable_parameters"] < 1_000_000


def test_04_saves_the_adapter_and_tracks_locally(nb04):
    found, _, out_dir = nb04
    adapter = out_dir / "adapter"
    for name in ADAPTER_FILES:
        assert name in found["adapter_files"] and (adapter / name).is_file(), name
    run = json.loads((adapter / "course_run.json").read_text(encoding="utf-8"))
    assert run["metrics"]["steps"] == found["steps"] and run["settings"]["tracking"] == "local"
    assert found["tracking"] == "local" and any((out_dir / "swanlog").rglob("*"))


def test_04_shows_predictions_and_the_loss_plot(nb04):
    found, outputs, _ = nb04
    assert found["predictions"] and {"step", "prompt", "answer", "stopped"} <= set(found["predictions"][0])
    assert {p["step"] for p in found["predictions"]} >= {0, found["steps"]}  # before and after training
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_04_refuses_an_output_dir_holding_another_adapter(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    done = tmp_path / "done"
    done.mkdir()
    (done / "adapter_config.json").write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"weights")
    status, _, executed = run_notebook(NB04, tmp_path, {
        "PROFILE": "tiny", "OUTPUT_DIR": str(done), "TRACKING": "local", "RECORD_FILE": str(tmp_path / "04.json")})
    assert status != "ok" and "CourseError" in status
    shown = json.dumps(outputs_of(executed), ensure_ascii=False)
    assert "already holds a trained adapter" in shown and "RESUME = True" in shown
    assert "Traceback" not in shown  # one sentence, not a stack trace
    assert sorted(p.name for p in done.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (done / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "04.json").exists()
