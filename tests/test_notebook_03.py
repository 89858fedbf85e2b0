"""Notebook 03 runs headless on the tiny tokenizer, in a fresh kernel; the tests read what it showed.

It runs once per session; a learner's variants run its cells in this process (``run_cells``)."""

import re

import pytest

from conftest import execute, run_cells

pytestmark = pytest.mark.slow
from helpers.data import load_alpaca


@pytest.fixture(scope="module")
def nb03(tmp_path_factory, tiny_dir):
    run = execute("03_dataset_formatting.ipynb", tmp_path_factory.mktemp("nb03"), RECIPE="tiny")
    assert run.status == "ok", run.status
    return run


def test_03_loads_and_checks_the_sample(nb03):
    found = nb03.record
    assert found["recipe"] == "tiny" and found["data"] == "sample"
    assert found["rows"] == {"train": len(load_alpaca("sample")), "test": len(load_alpaca("sample", split="test"))}
    assert found["broken_problems"] == 5 and found["broken_kept"] == 1  # the demo's bad rows are all named
    assert "DataError:" in nb03.shown and "row 2: 'output' is empty" in nb03.shown


def test_03_length_stats_are_consistent(nb03):
    found = nb03.record
    stats = found["length_stats"]
    assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["max_length"] == 256  # the tiny recipe's max_length
    assert found["kept"] + found["dropped"] == found["rows"]["train"]
    assert stats["share_over_max_length"] == pytest.approx(found["dropped"] / found["rows"]["train"])


def test_03_one_prefix_prompt_masked_end_token_trained(nb03):
    found = nb03.record
    assert found["gmask_count"] == 1 and found["all_prompt_labels_masked"] is True and found["answer_trained"] is True
    assert found["last_label_token"] == "<|user|>" and found["end_token_trained"] is True


def test_03_pad_is_eos_demo_and_stable_split(nb03):
    found = nb03.record
    assert found["mask_by_pad_drops_end"] is True  # masking by pad id loses an <|endoftext|> end token
    assert found["trl_keeps_end_label"] is True  # TRL pads labels by position with -100
    assert found["split_stable"] is True
    assert "positional split, same after shuffling: False" in nb03.shown


def test_03_shows_the_histogram_and_the_label_mask(nb03):
    assert any("image/png" in o.get("data", {}) for o in nb03.outputs)  # the length histogram
    assert "text/html" in nb03.shown and "[不训练]" in nb03.shown and "[训练]" in nb03.shown
    assert nb03.stderr == []  # no red warning under any cell (bitsandbytes' kernel notice included)
    assert not re.search(r"\d+%\|", nb03.shown)  # no library progress bar, saved at the frame it first drew


def test_03_with_another_end_token_says_which_property_broke(tiny_dir):
    # exercise 3: a learner swaps the end token in build_example; the notebook names what changed
    edit = ('convert_tokens_to_ids("<|user|>")  # the template', 'convert_tokens_to_ids("<|endoftext|>")  # the template')
    namespace, printed, error = run_cells("03_dataset_formatting.ipynb", {"RECIPE": "tiny"}, [edit])
    assert isinstance(error, AssertionError) and "talk_example" not in namespace  # step 5's checks stopped it
    assert "'last_label_token': '<|endoftext|>'" in printed and namespace["checks"]["gmask_count"] == 1


def test_03_the_training_template_agrees_with_build_example_and_trains_the_end(nb03):
    found = nb03.record
    assert found["template_agrees"]["same"] == found["template_agrees"]["rows"] == found["rows"]["train"] + 1  # + the tool call
    assert found["stop_token_trained"] is True  # TRL's own check of the template


def test_03_trains_every_answer_of_a_conversation_and_no_tool_result(nb03):
    found = nb03.record["conversation"]
    assert found["matches_template"] is True and found["gmask_count"] == 1
    assert found["answers"] == 3 and len(found["trained_pieces"]) == 3
    assert all(piece.startswith("\n") and piece.endswith("<|user|>") for piece in found["trained_pieces"])
    call, answer = nb03.record["tool_call_trained"]
    assert call.startswith("get_weather\n") and call.endswith("<|observation|>")  # the call and the token that ends it
    assert "晴" not in call and answer.endswith("<|user|>")  # the tool's result is not trained


def test_03_runs_on_alpaca_data_without_conversations(tmp_path, tiny_dir):
    """DATA set to a learner's own Alpaca file: no messages column, yet the conversation demo uses the sample's."""
    import json

    from helpers.data import read_rows

    own = tmp_path / "mine.json"
    own.write_text(json.dumps(read_rows("data/alpaca_zh_sample.json"), ensure_ascii=False), encoding="utf-8")
    namespace, printed, error = run_cells("03_dataset_formatting.ipynb", {"RECIPE": "tiny", "DATA": str(own)})
    assert error is None, error
    assert len(namespace["dataset"]) == len(load_alpaca(str(own)))  # its own rows: no identity rows are added
    assert namespace["conversation_checks"]["answers"] == 3 and "0 conversations" in printed
