"""Shared fixtures: the tiny GLM-4 (built once when missing), notebook runs, notebook 04's default run."""

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import REPO_ROOT, resolve  # noqa: E402

NOTEBOOKS = REPO_ROOT / "notebooks"


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


class Executed:
    """An executed notebook: its status, its record (the JSON shown by the cell tagged `record`), its outputs."""

    def __init__(self, status, path):
        import nbformat

        self.status, self.path = status, path
        self.notebook = nbformat.read(path, as_version=4)
        self.outputs = [o for c in self.notebook.cells for o in c.get("outputs", [])]
        self.shown = json.dumps(self.outputs, ensure_ascii=False)
        # red text under a cell: a learner reads it as something to fix, so every one must have a reason
        self.stderr = ["".join(o["text"]) for o in self.outputs if o.get("name") == "stderr" and "".join(o["text"]).strip()]
        record = [c for c in self.notebook.cells if "record" in c.metadata.get("tags", [])]
        shown = [o["data"]["application/json"] for c in record for o in c.get("outputs", [])
                 if "application/json" in o.get("data", {})]
        self.record = shown[0] if shown else None


def execute(name_or_path, out_dir, source_edits=(), **parameters) -> Executed:
    """Run a notebook headless in a fresh kernel, as `make tutorial` does; ``source_edits`` are (old, new)
    replacements in its cells first, as a learner typing into them would make."""
    from pathlib import Path

    from helpers.tutorial import run_notebook

    path = Path(name_or_path)
    path = path if path.is_absolute() else NOTEBOOKS / path
    if source_edits:
        import nbformat

        nb = nbformat.read(path, as_version=4)
        for old, new in source_edits:
            cells = [c for c in nb.cells if old in c.source]
            assert len(cells) == 1, f"{old!r} is in {len(cells)} cells of {path.name}"
            cells[0].source = cells[0].source.replace(old, new)
        path = out_dir / "edited" / path.name
        path.parent.mkdir(exist_ok=True)
        nbformat.write(nb, path)
    status, _, executed = run_notebook(path, out_dir, parameters)
    return Executed(status, executed)


@pytest.fixture(scope="session")
def nb04(tmp_path_factory, tiny_dir):
    """Notebook 04 run once with its defaults (the whole tiny training), tracked in SwanLab's local mode.
    The adapter is in ``run.adapter``; notebook 05's tests start from it."""
    out_dir = tmp_path_factory.mktemp("nb04")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWANLAB_LOG_DIR", str(out_dir / "swanlog"))  # the kernel inherits the environment
        run = execute("04_lora_sft.ipynb", out_dir, PROFILE="tiny", OUTPUT_DIR=str(out_dir / "adapter"),
                      TRACKING="local")
    assert run.status == "ok", run.status
    run.adapter, run.dir = out_dir / "adapter", out_dir
    return run
