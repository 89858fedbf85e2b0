"""Shared fixtures: the tiny GLM-4 (built once when missing), notebook 04's default run, offline settings."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import REPO_ROOT, resolve  # noqa: E402

NB04 = REPO_ROOT / "notebooks/04_lora_sft.ipynb"


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


def outputs_of(executed) -> list:
    """Every output of an executed notebook."""
    import nbformat

    return [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]


@pytest.fixture(scope="session")
def nb04(tmp_path_factory, tiny_dir):
    """Notebook 04 run once with its defaults (the whole tiny training), tracked in SwanLab's local mode:
    (its record, its outputs, its directory, where the adapter is ``adapter/``). Notebook 05 starts from it."""
    import json

    from helpers.tutorial import run_notebook

    out_dir = tmp_path_factory.mktemp("nb04")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWANLAB_LOG_DIR", str(out_dir / "swanlog"))  # the kernel inherits the environment
        status, _, executed = run_notebook(NB04, out_dir, {
            "PROFILE": "tiny", "OUTPUT_DIR": str(out_dir / "adapter"), "TRACKING": "local",
            "RECORD_FILE": str(out_dir / "04.json")})
    assert status == "ok", status
    return json.loads((out_dir / "04.json").read_text(encoding="utf-8")), outputs_of(executed), out_dir
