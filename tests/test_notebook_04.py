"""Notebook 04 trains the tiny model headless, tracked locally, and saves an adapter notebook 05 loads."""

import json
import math

from conftest import execute
from helpers.data import load_alpaca
from helpers.profiles import get_profile

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "profile.json")


def planned_steps(profile) -> int:
    """The Trainer's step count for the sample data: ceil(epochs x batches per epoch), or max_steps."""
    if profile.max_steps > 0:
        return profile.max_steps
    per_epoch = math.ceil(math.ceil(len(load_alpaca("sample")) / profile.batch_size) / profile.grad_accum)
    return math.ceil(profile.num_epochs * per_epoch)


def test_04_trains_with_the_profile_defaults_and_the_loss_falls(nb04):
    found = nb04.record
    assert found["profile"] == "tiny" and found["resumed_from"] == ""
    assert found["steps"] == found["planned_steps"] == planned_steps(get_profile("tiny"))
    assert found["eval_loss_after"] < found["eval_loss_before"] - 0.5
    losses = [loss for _, loss in found["loss_history"]]
    assert len(losses) >= 10 and losses[-1] < losses[0]
    assert found["changed_from_defaults"] == {"output_dir": str(nb04.adapter)}  # only where the test put it
    assert found["trainable_9b"] == 5_406_720  # r 8 on q/k/v of GLM-4-9B
    assert 0 < found["trainable_parameters"] < 1_000_000


def test_04_saves_the_adapter_with_its_profile_and_tracks_locally(nb04):
    found = nb04.record
    for name in ADAPTER_FILES:
        assert name in found["adapter_files"] and (nb04.adapter / name).is_file(), name
    saved = json.loads((nb04.adapter / "profile.json").read_text(encoding="utf-8"))
    assert saved["name"] == "tiny" and saved["model_path"] == "weights/tiny-glm4"
    assert found["tracking"] == "local" and any((nb04.dir / "swanlog").rglob("*"))


def test_04_shows_predictions_a_progress_table_and_the_loss_plot(nb04):
    found = nb04.record
    assert {p["step"] for p in found["predictions"]} >= {0, found["steps"]}  # before and after training
    last = [p for p in found["predictions"] if p["step"] == found["steps"]]
    assert any("知微" in p["answer"] and p["stopped"] for p in last)  # it learned who it is, and to stop
    assert any("image/png" in o.get("data", {}) for o in nb04.outputs)
    # training shows as the Trainer's table (one row per evaluation), not as raw log dicts
    assert "<progress" in nb04.shown and "Validation Loss" in nb04.shown and "{'loss':" not in nb04.shown
    assert nb04.stderr == []  # no red warning under any cell


def test_04_with_a_learners_own_rank_and_learning_rate(tmp_path, tiny_dir, monkeypatch):
    # exercise 2, typed into the cells: r=4 and another learning rate; the run completes and says what differs
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    run = execute("04_lora_sft.ipynb", tmp_path, PROFILE="tiny", OUTPUT_DIR=str(tmp_path / "r4"), MAX_STEPS=12,
                  TRACKING="disabled", source_edits=[("r=profile.lora_r,", "r=4,"),
                                                     ("learning_rate=profile.learning_rate,", "learning_rate=1e-3,")])
    assert run.status == "ok", run.status
    found = run.record
    assert found["lora_r"] == 4 and found["learning_rate"] == 1e-3 and found["steps"] == 12
    assert "你的 lora_r=4，命令行默认 lora_r=16" in run.shown and "你的 learning_rate=0.001" in run.shown
    assert "--lora-r 4" in run.shown and "--learning-rate 0.001" in run.shown and "--max-steps 12" in run.shown
    config = json.loads((tmp_path / "r4" / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["r"] == 4


def test_04_refuses_an_output_dir_holding_another_adapter(tmp_path, tiny_dir):
    done = tmp_path / "done"
    done.mkdir()
    (done / "adapter_config.json").write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"weights")
    run = execute("04_lora_sft.ipynb", tmp_path, PROFILE="tiny", OUTPUT_DIR=str(done), TRACKING="disabled")
    assert run.status != "ok" and "CourseError" in run.status
    assert "already holds a trained adapter" in run.shown and "RESUME = True" in run.shown
    assert "Traceback" not in run.shown  # one sentence, not a stack trace
    assert sorted(p.name for p in done.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (done / "adapter_model.safetensors").read_bytes() == b"weights"
