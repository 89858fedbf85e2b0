"""Notebooks 01 and 02 run headless on the tiny model, in a fresh kernel; the tests read what they showed."""

import json

import pytest

from conftest import execute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nb01(tmp_path_factory, tiny_dir):
    run = execute("01_base_model_inference.ipynb", tmp_path_factory.mktemp("nb01"), RECIPE="tiny", MAX_NEW_TOKENS=16)
    assert run.status == "ok", run.status
    return run


@pytest.fixture(scope="module")
def nb02(tmp_path_factory, tiny_dir):
    run = execute("02_chat_template.ipynb", tmp_path_factory.mktemp("nb02"), RECIPE="tiny", ANSWER="长城很长。")
    assert run.status == "ok", run.status
    return run


def saved_end_ids(tiny_dir):
    return json.loads((tiny_dir / "generation_config.json").read_text())["eos_token_id"]


def test_01_counts_parameters_by_module(nb01, model):
    found = nb01.record
    assert found["recipe"] == "tiny" and found["dtype"] == "float32"
    counts = found["parameters"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    cfg = model.config
    assert counts["embeddings"] == counts["lm_head"] == cfg.vocab_size * cfg.hidden_size
    assert counts["mlp"] == cfg.num_hidden_layers * 3 * cfg.hidden_size * cfg.intermediate_size  # fused gate_up + down
    big = found["parameters_glm4_9b"]
    assert big["total"] == 9_399_951_360 and big["embeddings"] == 151_552 * 4096
    params = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert found["weights_gib"] == pytest.approx(params / 1024**3, abs=1e-6)
    assert "GlmForCausalLM(" in nb01.shown and "gate_up_proj" in nb01.shown  # print(model) is shown
    assert nb01.stderr == []  # no red warning under any cell


def test_01_shows_one_prefix_and_base_model_continuations(nb01, tiny_dir):
    found = nb01.record
    assert found["prompt_tokens"][:2] == ["[gMASK]", "<sop>"] and found["prompt_tokens"].count("[gMASK]") == 1
    assert found["end_ids"] == saved_end_ids(tiny_dir)
    assert found["greedy_stopped"] is False and len(found["greedy"]) == 2  # a base model never learned to stop
    assert found["same_seed_same_text"] is True
    assert found["chat_answer"] is None and "没有可对照的对话模型" in nb01.shown  # tiny has no chat model


def test_02_renders_the_template_as_expected(nb02):
    found = nb02.record
    assert found["matches"] == {"conversation": True, "multi_turn": True, "empty_system": True,
                                "generation_prompt": True}
    assert found["rendered"] == found["expected"]
    assert found["rendered"]["conversation"].endswith("<|assistant|>\n长城很长。")  # ANSWER was overridden
    assert all(text.count("[gMASK]<sop>") == 1 for text in found["rendered"].values())
    assert nb02.stderr == []


def test_02_one_prefix_the_right_ways_two_the_wrong_way(nb02):
    assert nb02.record["prefix_counts"] == {"render_then_tokenize": 2, "apply_chat_template": 1,
                                            "add_special_tokens_false": 1}


def test_02_end_ids_and_stopping(nb02, tiny_dir):
    found = nb02.record
    assert found["end_ids"] == saved_end_ids(tiny_dir)
    assert found["end_tokens"] == ["<|endoftext|>", "<|user|>", "<|observation|>"]
    assert found["train_last_token"] == "<|user|>" and found["generated_stopped"] is False  # the base runs on
    assert found["forced_stopped_on"] == "<|user|>" and found["forced_generated"] < found["forced_tokens"]
    assert found["cut_answer"] == "\n长城很长。"


def test_01_on_a_cuda_recipe_without_gpu_stops_with_one_sentence(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the kernel sees no GPU, whatever this machine has
    run = execute("01_base_model_inference.ipynb", tmp_path, RECIPE="glm4-9b")
    assert run.status.startswith("failed: CourseError:") and 'RECIPE = "tiny"' in run.status, run.status
    assert "Traceback" not in run.shown and run.record is None
