"""Downloading the 9B weights fails fast and clearly when the source cannot be reached."""

import time

from conftest import run_module


def test_offline_mode_fails_at_once():
    start = time.monotonic()
    result = run_module("helpers.download", "glm4-9b", env={"HF_HUB_OFFLINE": "1"})
    assert time.monotonic() - start < 30  # a generous bound against a hang, not a timing test
    assert result.returncode == 2
    assert "HF_HUB_OFFLINE=1 is set" in result.stderr and "--source modelscope" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_endpoint_fails_in_one_sentence():
    # a closed port on this machine: refused at once, as a blocked hub or a wrong mirror would be
    result = run_module("helpers.download", "glm4-9b", "--only", "base",
                        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "http://127.0.0.1:9 cannot be reached" in result.stderr and "HF_ENDPOINT" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_name_with_nothing_to_download_is_refused_by_the_parser():
    result = run_module("helpers.download", "tiny")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_tokenizer_without_a_chat_template_gets_glm4s(tmp_path, tiny_dir):
    import shutil

    from transformers import AutoTokenizer

    from helpers.download import add_chat_template, models
    from helpers.families import GLM4

    for name in ("tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja, like some base checkpoints
        shutil.copy(tiny_dir / name, tmp_path / name)
    template = models("glm4-9b")["base"][4]
    assert template == GLM4.chat_template
    assert add_chat_template(tmp_path, template) is True and add_chat_template(tmp_path, template) is False  # once
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == "[gMASK]<sop><|user|>\n你好<|assistant|>"


def test_the_downloads_come_from_the_family_entry():
    from helpers import REPO_ROOT
    from helpers.download import models

    found = models("glm4-9b")
    assert found["base"][:4] == (REPO_ROOT / "weights/glm-4-9b-hf", "THUDM/glm-4-9b-hf", "ZhipuAI/glm-4-9b-hf", 19.0)
    assert found["chat"][1] == "THUDM/glm-4-9b-chat-hf" and found["chat"][0].name == "glm-4-9b-chat-hf"
