"""Notebooks 01 and 02 run headless on the tiny model, in a fresh kernel, and record what they showed."""

import json

import nbformat
import pytest

from helpers import REPO_ROOT
from helpers.models import count_parameters, weights_memory_gb
from helpers.tutorial import run_notebook

NB01 = REPO_ROOT / "notebooks/01_base_model_inference.ipynb"
NB02 = REPO_ROOT / "notebooks/02_chat_template.ipynb"


def run(path, out_dir, **parameters):
    record = out_dir / "record.json"
    status, _, executed = run_notebook(path, out_dir, {"PROFILE": "tiny", "RECORD_FILE": str(record), **parameters})
    assert status == "ok", status
    shown = json.dumps([c.get("outputs", []) for c in nbformat.read(executed, as_version=4).cells],
                       ensure_ascii=False)
    return json.loads(record.read_text(encoding="utf-8")), shown


@pytest.fixture(scope="module")
def nb01(tmp_path_factory, tiny_dir):
    return run(NB01, tmp_path_factory.mktemp("nb01"), MAX_NEW_TOKENS=16)


@pytest.fixture(scope="module")
def nb02(tmp_path_factory, tiny_dir):
    return run(NB02, tmp_path_factory.mktemp("nb02"), ANSWER="长城很长。")


def saved_end_ids(tiny_dir):
    return json.loads((tiny_dir / "generation_config.json").read_text())["eos_token_id"]


def test_01_records_the_structure_and_parameter_counts(nb01, model):
    found, shown = nb01
    assert found["profile"] == "tiny" and found["dtype"] == "float32"
    counts = found["parameters"]
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert counts == count_parameters(model)
    big = found["parameters_glm4_9b"]
    assert big["total"] == 9_399_951_360 and sum(v for k, v in big.items() if k != "total") == big["total"]
    assert found["weights_memory_gb"] == pytest.approx(weights_memory_gb(model))
    assert "GlmForCausalLM(" in shown and "gate_up_proj" in shown  # print(model) is shown


def test_01_shows_one_prefix_and_base_model_continuations(nb01, tiny_dir):
    found, shown = nb01
    assert found["first_two_tokens"] == ["[gMASK]", "<sop>"] == found["prompt_tokens"][:2]
    assert found["gmask_count"] == 1
    assert found["end_ids"] == saved_end_ids(tiny_dir)
    assert isinstance(found["greedy_stopped_on_end_id"], bool)
    assert len(found["greedy"]) == 2 and all(isinstance(t, str) for t in found["greedy"].values())
    assert found["same_seed_same_text"] is True and len(found["samples"]) == 5
    assert found["chat_answer"] is None and "没有可对照的对话模型" in shown  # tiny has no chat model


def test_02_renders_the_template_as_expected(nb02):
    found, _ = nb02
    assert found["matches"] == {"conversation": True, "multi_turn": True, "empty_system": True,
                                "generation_prompt": True}
    assert found["rendered"] == found["expected"]
    assert found["rendered"]["conversation"].endswith("<|assistant|>\n长城很长。")  # ANSWER was overridden
    assert found["rendered"]["generation_prompt"].endswith("<|assistant|>")
    assert all(text.count("[gMASK]<sop>") == 1 for text in found["rendered"].values())


def test_02_records_one_prefix_the_right_ways_and_two_the_wrong_way(nb02):
    found, _ = nb02
    assert found["prefix_counts"] == {"render_then_tokenize": 2, "apply_chat_template": 1,
                                      "add_special_tokens_false": 1}
    assert found["right_ways_agree"] is True


def test_02_end_ids_and_stopping(nb02, tiny_dir):
    found, _ = nb02
    assert found["end_ids"] == found["generation_eos"] == saved_end_ids(tiny_dir)
    assert found["end_tokens"] == ["<|endoftext|>", "<|user|>", "<|observation|>"]
    assert found["train_last_token"] == "<|user|>"
    assert isinstance(found["generated_stopped_on_end_id"], bool)
    assert found["forced_stopped_on"] == "<|user|>" and found["forced_generated"] < found["forced_tokens"]
    assert found["cut_answer"] == "\n长城很长。"


def test_01_on_a_cuda_profile_without_gpu_stops_with_one_sentence(tmp_path, tiny_dir):
    from helpers.env import gpu_info

    if gpu_info() is not None:
        pytest.skip("this machine has a CUDA GPU")
    status, _, _ = run_notebook(NB01, tmp_path, {"PROFILE": "glm4-9b", "RECORD_FILE": str(tmp_path / "x.json")})
    assert status.startswith("failed: CourseError:") and 'PROFILE = "tiny"' in status, status
    assert not (tmp_path / "x.json").exists()
