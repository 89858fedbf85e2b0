"""Shared fixtures: the tiny GLM-4 (built once when missing) and offline settings."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import REPO_ROOT, resolve  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir():
    """weights/tiny-glm4, built by `make tiny`, or here when a test run starts without it."""
    path = resolve("weights/tiny-glm4")
    if not (path / "config.json").is_file():
        from helpers.tiny import build

        build(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def run_module(*args, env=None, timeout=120, input=None):
    """Run `python -m ...` from the repository root as a learner would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    for key, value in list(full_env.items()):
        if value is None:
            del full_env[key]
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=full_env, input=input,
                          capture_output=True, text=True, timeout=timeout)
