"""Notebook 03 runs headless on the tiny tokenizer, in a fresh kernel, and records what it showed."""

import json

import nbformat
import pytest

from helpers import REPO_ROOT
from helpers.data import load_alpaca
from helpers.tutorial import run_notebook

NB03 = REPO_ROOT / "notebooks/03_dataset_formatting.ipynb"


@pytest.fixture(scope="module")
def nb03(tmp_path_factory, tiny_dir):
    out_dir = tmp_path_factory.mktemp("nb03")
    record = out_dir / "03.json"
    status, _, executed = run_notebook(NB03, out_dir, {"PROFILE": "tiny", "RECORD_FILE": str(record)})
    assert status == "ok", status
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
    return json.loads(record.read_text(encoding="utf-8")), outputs


def test_03_loads_and_checks_the_sample(nb03):
    found, _ = nb03
    assert found["profile"] == "tiny" and found["data"] == "sample"
    assert found["rows"] == {"train": len(load_alpaca("sample")), "test": len(load_alpaca("sample", split="test"))}
    assert set(found["problems"]) == {"alpaca_zh_sample.json", "identity_zh.json", "heldout_zh.json"}
    assert all(count == 0 for count in found["problems"].values())
    assert found["broken_problems"] == 4 and found["broken_kept"] == 1  # the demo's bad rows are all named


def test_03_length_stats_are_consistent(nb03):
    found, _ = nb03
    stats = found["length_stats"]
    assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert 0.0 <= stats["share_over_max_length"] <= 1.0
    assert stats["max_length"] == found["prep"]["max_length"] == 256  # the tiny profile's max_length
    prep = found["prep"]
    assert prep["kept"] + prep["dropped"] == prep["rows"] == found["rows"]["train"]
    assert prep["dropped"] == found["over_max_length"]
    assert stats["share_over_max_length"] == pytest.approx(prep["dropped"] / prep["rows"])


def test_03_one_prefix_prompt_masked_end_token_trained(nb03):
    found, _ = nb03
    assert found["gmask_count"] == 1 and found["all_examples_one_prefix"] is True
    assert found["all_prompt_labels_masked"] is True and found["answer_trained"] is True
    assert found["last_label_token"] == "<|user|>" and found["end_token_trained"] is True


def test_03_pad_is_eos_demo_and_stable_split(nb03):
    found, _ = nb03
    assert found["mask_by_pad_drops_end"] is True  # masking by pad id loses an <|endoftext|> end token
    assert found["trl_keeps_end_label"] is True  # TRL pads labels by position with -100
    assert found["split_stable"] is True


def test_03_shows_the_histogram_and_the_label_mask(nb03):
    _, outputs = nb03
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the length histogram
    shown = json.dumps(outputs, ensure_ascii=False)
    assert "text/html" in shown and "[不训练]" in shown and "[训练]" in shown
