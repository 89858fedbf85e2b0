"""Notebook 04 trains the tiny model headless, tracked locally, and saves an adapter notebook 05 loads.

It runs once per session (conftest's ``nb04``); a learner's edits to its cells are tried in the copied-script test.
"""

import json
import math
import re

import pytest

from conftest import EXERCISE_STEPS
from helpers.data import IDENTITY, load_alpaca
from helpers.recipes import Recipe, read_recipe

pytestmark = pytest.mark.slow

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "recipe.yaml")


def planned_steps(recipe) -> int:
    """The Trainer's step count for the sample and its identity rows (each alone and inside a conversation):
    ceil(epochs x batches per epoch), or max_steps."""
    if recipe.get("max_steps", -1) > 0:
        return recipe["max_steps"]
    rows = len(load_alpaca("sample")) + 2 * len(load_alpaca(IDENTITY, split="all"))  # alone, and in a conversation
    per_epoch = math.ceil(math.ceil(rows / recipe["per_device_train_batch_size"]) / recipe["gradient_accumulation_steps"])
    return math.ceil(recipe["num_train_epochs"] * per_epoch)


def test_04_trains_with_the_recipe_and_the_loss_falls(nb04):
    found = nb04.record
    assert found["recipe"] == "tiny" and found["resumed_from"] == ""
    assert found["steps"] == found["planned_steps"] == planned_steps(read_recipe("tiny"))
    assert found["eval_loss_after"] < found["eval_loss_before"] - 0.5
    losses = [loss for _, loss in found["loss_history"]]
    assert len(losses) >= 10 and losses[-1] < losses[0]
    assert found["changed_from_recipe"] == {"output_dir": str(nb04.adapter)}  # only where the test put it
    assert found["trainable_9b"] == 5_406_720  # r 8 on q/k/v of GLM-4-9B
    assert 0 < found["trainable_parameters"] < 1_000_000


def test_04_saves_the_adapter_with_its_recipe_and_tracks_locally(nb04):
    found = nb04.record
    for name in ADAPTER_FILES:
        assert name in found["adapter_files"] and (nb04.adapter / name).is_file(), name
    saved = Recipe.load(nb04.adapter)
    assert saved.name == "tiny" and saved["model_name_or_path"] == "weights/tiny-glm4"
    assert saved == read_recipe("tiny", output_dir=str(nb04.adapter))  # the file's values, as the notebook ran them
    assert json.loads((nb04.adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"] == saved["lora_r"]
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
    assert not re.search(r"\d+%\|", nb04.shown)  # no library progress bar, saved at the frame it first drew


def test_04_exercise_2_trains_a_smaller_rank_from_the_command_line(nb04):
    cell = next(c for c in nb04.notebook.cells if '"--lora_r", "4"' in c.source)
    printed = "".join(o.get("text", "") for o in cell.outputs)
    # the command's last line, then this notebook's own figure to compare it with
    assert re.search(rf"eval loss [\d.]+ -> [\d.]+ after {EXERCISE_STEPS} steps \(\d+ s\); adapter saved to", printed), printed
    assert f"this notebook: eval loss {nb04.record['eval_loss_after']:.3f} after {nb04.record['steps']} steps" in printed


def test_04_exercise_4_refuses_to_write_over_the_finished_run(nb04):
    # RESUME = False on the output directory of the run that just finished: refused before anything loads
    assert f"RESUME = True continues from: checkpoint-{nb04.record['steps']}" in nb04.shown
    assert "CourseError:" in nb04.shown and "already holds a trained adapter or checkpoints" in nb04.shown
    assert "RESUME = True" in nb04.shown
