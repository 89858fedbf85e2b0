"""Notebook 05 after notebook 04's default run: chat, before/after measures, chat box, merge and reload."""

import json

import pytest

from conftest import outputs_of
from helpers import REPO_ROOT
from helpers.tutorial import run_notebook

NB05 = REPO_ROOT / "notebooks/05_adapter_chat.ipynb"


@pytest.fixture(scope="module")
def nb05(tmp_path_factory, nb04):
    _, _, nb04_dir = nb04
    out_dir = tmp_path_factory.mktemp("nb05")
    status, _, executed = run_notebook(NB05, out_dir, {
        "ADAPTER_DIR": str(nb04_dir / "adapter"), "MERGED_DIR": str(out_dir / "merged"),
        "RECORD_FILE": str(out_dir / "05.json")})
    assert status == "ok", status
    return json.loads((out_dir / "05.json").read_text(encoding="utf-8")), outputs_of(executed), out_dir


def test_05_fine_tuning_changed_the_model_in_numbers(nb05, nb04):
    found, _, _ = nb05
    base, tuned = found["measures"]["base"], found["measures"]["fine-tuned"]
    assert found["profile"] == "tiny" and base["answers"] == tuned["answers"] == 65
    assert tuned["stop_rate"] >= 0.9 and tuned["stop_rate"] > base["stop_rate"]
    assert tuned["identity_share"] >= 0.8 > base["identity_share"]
    assert tuned["eval_loss"] < base["eval_loss"] - 0.5
    # the adapter switched off is the base model notebook 04 started from
    assert base["eval_loss"] == pytest.approx(nb04[0]["eval_loss_before"], abs=0.1)
    answers = found["heldout_answers"]["fine-tuned"]
    assert sum(a["identity"] for a in answers if a["kind"] == "identity") / 25 == pytest.approx(tuned["identity_share"])


def test_05_chats_in_turns_and_stops_on_the_end_ids(nb05):
    found, _, _ = nb05
    assert len(found["end_ids"]) == 3
    first = found["fixed_prompts"][0]
    assert first["prompt"] == "你是谁？" and "知微" in first["fine-tuned"] and first["fine-tuned stopped"]
    assert not first["base stopped"]
    assert [t["user"] for t in found["multi_turn"]] == ["你叫什么名字？", "是谁训练了你？"]
    # the scripted chat box: two turns, /reset, then a new conversation starting at turn 1
    assert [(t["user"], t["turn"]) for t in found["chat_transcript"]] == [
        ("你好，你叫什么名字？", 1), ("你是哪个实验室训练的？", 2), ("你能帮我做些什么？", 1)]
    assert all(t["assistant"] for t in found["chat_transcript"])


def test_05_merged_model_reloads_and_answers_the_same(nb05):
    found, _, out_dir = nb05
    assert found["merged_same"] is True and len(found["merge_check"]) >= 5
    assert {"config.json", "model.safetensors", "chat_template.jinja", "tokenizer.json"} <= set(found["merged_files"])
    assert not (out_dir / "merged" / "adapter_config.json").exists()  # a plain model, no PEFT left


def test_05_shows_the_chart_and_the_chat_box(nb05):
    _, outputs, _ = nb05
    kinds = {kind for o in outputs for kind in o.get("data", {})}
    assert "image/png" in kinds and "application/vnd.jupyter.widget-view+json" in kinds
    shown = json.dumps(outputs, ensure_ascii=False)
    assert "—— 新对话 ——" in shown and "stopped on an end id" in shown


def test_05_refuses_a_missing_adapter_in_one_sentence(tmp_path, tiny_dir):
    status, _, executed = run_notebook(NB05, tmp_path, {
        "ADAPTER_DIR": str(tmp_path / "no-adapter"), "RECORD_FILE": str(tmp_path / "05.json")})
    assert status.startswith("failed: CourseError") and "does not exist" in status
    shown = json.dumps(outputs_of(executed), ensure_ascii=False)
    assert "Traceback" not in shown and not (tmp_path / "05.json").exists()
