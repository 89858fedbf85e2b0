"""Notebook 06 after notebook 04's default run: merge with the end ids, serve, call with the openai client, stop."""

import pytest

from conftest import execute
from helpers.evaluate import claims_identity
from helpers.tutorial import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nb06(tmp_path_factory, nb04):
    out_dir = tmp_path_factory.mktemp("nb06")
    run = execute("06_serving.ipynb", out_dir, ADAPTER_DIR=str(nb04.adapter), MERGED_DIR=str(out_dir / "merged"),
                  PORT=free_port())
    assert run.status == "ok", run.status
    return run


def test_06_one_end_id_runs_to_max_tokens_and_three_stop(nb06):
    found = nb06.record
    assert found["recipe"] == "tiny" and found["end_ids"] == [3000, 3007, 3009]
    assert found["one_end_id"]["finish_reason"] == "length"  # the failure the saved generation_config prevents
    assert found["answer"]["finish_reason"] == "stop" and "知微" in found["answer"]["content"]


def test_06_streams_and_answers_a_later_turn(nb06):
    found = nb06.record
    streamed = found["streamed"]
    assert streamed["chunks"] > 3 and streamed["finish_reason"] == "stop" and "知微" in streamed["content"]
    # the whole history reached the fine-tuned model: at turn 2 it claims its identity, its name or its lab (the base
    # says neither); one answer, not a measure: the padding-free default answers "我是青禾实验室训练的 AI 助手。"
    assert found["later_turn"]["finish_reason"] == "stop" and claims_identity(found["later_turn"]["content"])


def test_06_bad_requests_get_4xx_with_a_sentence_and_the_server_goes_on(nb06):
    found = nb06.record
    assert {r["request"]: r["status"] for r in found["rejected"]} == {
        "no messages": 400, "empty messages": 400, "unknown role": 400, "unknown model": 400, "max_tokens 0": 400,
        "past the context": 400,
        "not JSON": 422}
    assert all(r["detail"] for r in found["rejected"]) and found["still_serving"] == "stop"


def test_06_measures_throughput_and_stops_the_server(nb06):
    runs = nb06.record["throughput"]
    assert [r["clients"] for r in runs] == [1, 4] and all(r["requests"] == 12 for r in runs)
    assert all(r["requests/s"] > 0 and 0 < r["latency p50 (s)"] <= r["latency p90 (s)"] for r in runs)
    assert nb06.record["port_released"] is True
    assert nb06.stderr == []  # no red warning under any cell
