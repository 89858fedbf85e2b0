"""Notebook 05 after notebook 04's default run: chat, before/after measures, chat box, merge and reload.

It runs once per session; that its earlier cells still run after the merge is tried in the copied-script test.
"""

import re

import pytest

from conftest import EXERCISE_STEPS, execute
from helpers.tutorial import CHAT_SCRIPT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nb05(tmp_path_factory, nb04):
    out_dir = tmp_path_factory.mktemp("nb05")
    run = execute("05_adapter_chat.ipynb", out_dir, ADAPTER_DIR=str(nb04.adapter), MERGED_DIR=str(out_dir / "merged"),
                  CHAT_SCRIPT=CHAT_SCRIPT, EXERCISE_STEPS=EXERCISE_STEPS)  # as make tutorial types it
    assert run.status == "ok", run.status
    run.dir = out_dir
    return run


def test_05_fine_tuning_changed_the_model_in_numbers(nb05):
    found = nb05.record
    base, tuned = found["measures"]["base"], found["measures"]["fine-tuned"]
    assert found["recipe"] == "tiny" and len(found["heldout_answers"]["base"]) == 65
    assert tuned["stop_rate"] >= 0.9 and tuned["stop_rate"] > base["stop_rate"]
    assert tuned["identity_share"] >= 0.8 > base["identity_share"]
    assert tuned["eval_loss"] < base["eval_loss"] - 0.5
    # later turns of held-out conversations: the base never stops; the fine-tuned model stops and knows its name
    for turn in ("turn 2", "turn 3"):
        before, after = found["turns"]["base"][turn], found["turns"]["fine-tuned"][turn]
        assert after["questions"] == 30 and after["identity_questions"] == 12
        # identity at turns 2 and 3: 8 of 12 since training rows near an evaluation prompt were removed (10 of 12 before)
        assert after["stop_rate"] >= 0.9 > before["stop_rate"] and after["identity_share"] >= 0.6 > before["identity_share"]
    answers = found["heldout_answers"]["fine-tuned"]
    assert sum(a["identity"] for a in answers if a["kind"] == "identity") / 25 == pytest.approx(tuned["identity_share"])


def test_05_measures_on_the_sets_written_apart_base_against_fine_tuned(nb05):
    found = nb05.record
    assert len(found["independent"]["base"]["prompts"]["answers"]) == 48 + 96  # every question and task of data/eval/
    table = found["independent_measures"]
    base, tuned = table["base"], table["fine-tuned"]
    assert base["leakage (independent)"] == 0 and base["identity (independent)"] < 0.1  # the base never heard the name
    assert tuned["stop rate (independent)"] > base["stop rate (independent)"] + 0.5
    assert tuned["identity (independent)"] >= 0.8 and tuned["turn-2 stop (own answers)"] >= 0.9
    assert tuned["turn-2 identity (own answers)"] >= 0.6  # measured 85% (75% padded); 70% before the conversations
    # measured 22% (28% with LoRA dropout 0.05, 23% padded; README's table); the target, 5%, is not met yet: this
    # catches a fall back to the old 50%
    assert tuned["leakage (independent)"] <= 0.35
    turns = found["independent"]["fine-tuned"]["turns"]
    assert turns["turn 2"]["questions"] == 48 and turns["turn 2"]["identity_questions"] > 0
    leaks = [a for a in found["independent"]["fine-tuned"]["prompts"]["answers"] if a["kind"] != "identity"]
    assert tuned["leakage (independent)"] == pytest.approx(sum(a["claims"] for a in leaks) / 96, abs=1e-4)


def test_05_chats_in_turns_and_stops_on_the_end_ids(nb05):
    found = nb05.record
    assert len(found["end_ids"]) == 3
    first = found["fixed_prompts"][0]
    assert first["prompt"] == "你是谁？" and "知微" in first["fine-tuned"] and first["fine-tuned stopped"]
    assert not first["base stopped"]
    assert [(t["user"], t["turn"]) for t in found["multi_turn"]] == [("你叫什么名字？", 1), ("是谁训练了你？", 2)]
    # the scripted chat box: two turns, /reset, a new conversation at turn 1, then a fresh one for the learner
    assert [(t["user"], t["turn"]) for t in found["chat_transcript"]] == [
        ("你好，你叫什么名字？", 1), ("你是哪个实验室训练的？", 2), ("你能帮我做些什么？", 1)]
    assert all(t["assistant"] for t in found["chat_transcript"]) and found["chat_turn_after_script"] == 0


def test_05_merged_model_reloads_and_scores_the_same(nb05):
    found = nb05.record
    assert {"config.json", "model.safetensors", "chat_template.jinja", "tokenizer.json", "recipe.yaml"} <= set(found["merged_files"])
    assert "adapter_config.json" not in found["merged_files"]  # a plain model, no PEFT left
    assert all(row["same next token"] for row in found["merge_check"])
    assert max(row["max |logit difference|"] for row in found["merge_check"]) < 1e-3  # fp32: rounding only


def test_05_shows_the_chart_and_a_scrolling_chat_box(nb05):
    kinds = {kind for o in nb05.outputs for kind in o.get("data", {})}
    assert "image/png" in kinds and "application/vnd.jupyter.widget-view+json" in kinds
    assert "stopped on an end id" in nb05.shown and "turn now: 0" in nb05.shown
    assert nb05.stderr == []  # no red warning under any cell
    assert not re.search(r"\d+%\|", nb05.shown)  # no library progress bar, saved at the frame it first drew


def test_05_refuses_a_missing_adapter_in_one_sentence(tmp_path, tiny_dir):
    run = execute("05_adapter_chat.ipynb", tmp_path, ADAPTER_DIR=str(tmp_path / "no-adapter"))
    assert run.status.startswith("failed: CourseError") and "does not exist" in run.status
    assert "Traceback" not in run.shown and run.record is None


def test_05_exercise_6_trains_two_identity_shares_and_measures_both(nb05):
    cell = next(c for c in nb05.notebook.cells if "by_share = {}" in c.source)
    table = "".join(o["data"]["text/plain"] for o in cell.outputs if "text/plain" in o.get("data", {}))
    assert f"identity share 5%, {EXERCISE_STEPS} steps" in table and f"identity share 40%, {EXERCISE_STEPS} steps" in table, table
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in table.splitlines()[1:]}
    assert set(rows) == {"identity", "leakage"} and all(0 <= x <= 1 for r in rows.values() for x in r)
