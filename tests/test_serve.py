"""Serving: `python -m helpers.serve` answers the OpenAI client, stops on GLM-4's end ids, refuses bad requests."""

import json
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from conftest import run_main
from helpers import REPO_ROOT
from helpers.serve import context_problem, main, request_problem
from helpers.tutorial import free_port


@pytest.mark.parametrize("body,message", [
    ({}, "'messages' must be a non-empty list"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": "你好"}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "你好"}]}, "message 1 needs a 'role' among system, user, assistant, observation"),
    ({"messages": [{"role": "user"}]}, "message 1 needs a 'content' that is a string"),
    ({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 0}, "'max_tokens' must be a whole number of at least 1"),
    ({"messages": [{"role": "user", "content": "你好"}], "max_tokens": "8"}, "'max_tokens' must be a whole number"),
])
def test_bad_requests_are_named_with_the_fix(body, message):
    assert request_problem(body).startswith(message)


def test_good_requests_pass():
    assert request_problem({"messages": [{"role": "system", "content": "简短"}, {"role": "user", "content": "你好"}]}) is None
    assert request_problem({"model": "x", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 8, "stream": True}) is None


def test_a_request_past_the_context_is_named_with_both_numbers(tokenizer):
    question = [{"role": "user", "content": "你好"}]
    assert context_problem({"messages": question, "max_tokens": 16}, tokenizer, 1024) is None
    assert context_problem({"messages": question}, tokenizer, 1024) is None  # no max_tokens: the prompt alone counts
    long = [{"role": "user", "content": "长城" * 800}]
    prompt = len(tokenizer.apply_chat_template(long, add_generation_prompt=True)["input_ids"])
    assert prompt > 1024
    assert context_problem({"messages": long}, tokenizer, 1024) == (
        f"the request needs {prompt} tokens ({prompt} in the messages, 0 for the answer) but the model's context is "
        "1024 tokens: shorten the messages.")
    found = context_problem({"messages": question, "max_tokens": 1024}, tokenizer, 1024)
    assert "in the messages, 1024 for the answer" in found and found.endswith("shorten the messages or lower max_tokens.")


@pytest.fixture(scope="module")
def served(adapter, tmp_path_factory):
    """`python -m helpers.serve --adapter` on notebook 04's adapter (a copy), on a free port, as a learner starts it."""
    trained, adapter = adapter, tmp_path_factory.mktemp("serve") / "adapter"
    shutil.copytree(trained, adapter)
    port, log = free_port(), adapter.parent / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "helpers.serve", "--adapter", str(adapter), "--port", str(port)],
                               cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(240):
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the server did not start:\n{log.read_text()}")
    yield port, adapter
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_the_openai_client_gets_the_name_and_a_stop(served):
    from openai import OpenAI

    port, adapter = served
    assert json.loads((adapter.parent / "adapter-merged" / "generation_config.json").read_text())["eos_token_id"] == [3000, 3007, 3009]
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
    assert [m.id for m in client.models.list().data] == ["adapter-merged"]
    answer = client.chat.completions.create(model="adapter-merged", messages=[{"role": "user", "content": "你是谁？"}],
                                            max_tokens=96)
    assert "知微" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="adapter-merged", messages=[{"role": "user", "content": "你是谁？"}],
                                            max_tokens=96, stream=True)
    chunks = [c for c in stream if c.choices]
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content  # greedy: same


@pytest.mark.slow
def test_bad_requests_get_400_and_the_server_keeps_serving(served):
    port, _ = served
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    empty = httpx.post(url, json={"messages": []}, timeout=60)
    assert empty.status_code == 400 and "'messages' must be a non-empty list" in empty.json()["detail"]
    assert httpx.post(url, json={"model": "gpt-4", "messages": [{"role": "user", "content": "你好"}]}, timeout=60).status_code == 400
    assert httpx.post(url, content="not json", headers={"content-type": "application/json"}, timeout=60).status_code == 422
    long = httpx.post(url, json={"messages": [{"role": "user", "content": "长城" * 5000}], "max_tokens": 5}, timeout=60)
    assert long.status_code == 400 and "but the model's context is 1024 tokens" in long.json()["detail"]  # not 200, cut
    ok = httpx.post(url, json={"messages": [{"role": "user", "content": "你是谁？"}], "max_tokens": 96}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "stop"


def test_a_model_without_the_end_ids_is_refused_in_one_line(random_adapter, tmp_path):
    merged = tmp_path / "merged"
    from helpers.serve import merge_adapter

    merge_adapter(random_adapter, merged)
    config = json.loads((merged / "generation_config.json").read_text())
    assert config["eos_token_id"] == [3000, 3007, 3009]  # the merge writes all three
    (merged / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": 3000}))
    code, _, err = run_main(main, "--model", str(merged), "--port", str(free_port()))
    assert code == 2 and "does not list GLM-4's three end ids" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_paths_and_a_busy_port_are_refused_in_one_line(random_adapter, tmp_path):
    code, _, err = run_main(main, "--adapter", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = run_main(main, "--model", str(random_adapter))
    assert code == 2 and "is a LoRA adapter, not a full model: use --adapter" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run_main(main, "--adapter", str(random_adapter), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "is in use" in err
