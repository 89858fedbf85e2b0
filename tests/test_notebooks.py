"""Every notebook is committed clean and follows the skeleton; notebook 00 runs; the tutorial command runs them."""

import ast
import json

import nbformat
import pytest

from conftest import run_main, run_module
from helpers import REPO_ROOT
from helpers.tutorial import notebooks

NOTEBOOKS = notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_follows_the_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "你将学到" in nb.cells[0].source and "前置条件" in nb.cells[0].source
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code.index(params[0]) == 1  # second code cell, after the imports
    for node in ast.parse(params[0].source).body:  # literals only, so papermill can override them
        assert isinstance(node, ast.Assign) and node.targets[0].id.isupper()
        ast.literal_eval(node.value)
    record = [c for c in code if "record" in c.metadata.get("tags", [])]
    # cells the exercises need in every copy, students' included (06: the server, restarted and stopped again)
    exercise_setup = [c for c in code if "exercise-setup" in c.metadata.get("tags", [])]
    assert all(code.index(c) > code.index(record[0]) for c in exercise_setup), "exercise setup comes after the lesson"
    code = [c for c in code if c not in exercise_setup]
    solutions = [c for c in code if "solution" in c.metadata.get("tags", [])]
    cleanup = [c for c in code if "cleanup" in c.metadata.get("tags", [])]  # frees the GPU for the next notebook
    assert len(cleanup) <= 1 and (not cleanup or cleanup[0] is code[-1]), "a cleanup cell comes last"
    lesson = code[:len(code) - len(solutions) - len(cleanup)]
    assert len(record) == 1 and record[0] is lesson[-1], "one last lesson cell, tagged record, shows the run's results"
    assert solutions and code[len(lesson):len(code) - len(cleanup)] == solutions, "after the lesson come the exercises' solutions"
    for cell in solutions:  # each right after its exercise
        before = nb.cells[nb.cells.index(cell) - 1]
        assert before.cell_type == "markdown" and before.source.startswith("**练习 "), before.source[:40]
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("## 小结", "## 练习", "## 下一步"):
        assert heading in text
    taught = "\n".join(c.source for c in code if c not in cleanup)  # the cleanup cell alone gives GPU memory back
    assert "!pip" not in taught and "torch.cuda" not in taught
    assert nb.cells.index(record[0]) < 40, "the lesson, before its exercises, stays short"
    assert max(len(c.source.splitlines()) for c in code) <= 32, "cells short enough to read"


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory, tiny_dir):
    """`python -m helpers.tutorial --all-recipes --only 00`, once: the command as an instructor runs it, and the one
    run of notebook 00, whose executed copy the tests read."""
    out = tmp_path_factory.mktemp("tutorial")
    result = run_module("helpers.tutorial", "--all-recipes", "--only", "00", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, out


@pytest.mark.slow
def test_notebook_00_runs_and_shows_the_environment(tutorial):
    from conftest import Executed

    run = Executed("ok", tutorial[1] / "tiny" / "00_environment.ipynb")
    found = run.record
    assert found["recipe"] == "tiny" and found["counts"]["fail"] == 0
    checks = {c["name"]: c for c in found["checks"]}
    assert checks["weights/tiny-glm4"]["status"] == "ok"
    assert checks["transformers"]["status"] == "ok" and checks["torch"]["detail"].startswith("2.13.0")
    assert checks["swanlab"]["detail"].split()[0] in ("local", "cloud", "offline", "disabled")
    # the auto choice is shown as the code makes it, with its reason
    assert json.dumps(f"auto 会选择：{found['auto_recipe']}（{found['auto_reason']}）", ensure_ascii=False)[1:-1] in run.shown
    assert "text/html" in run.shown and "weights/glm-4-9b-hf" in run.shown and run.stderr == []


@pytest.mark.slow
def test_tutorial_command_runs_notebooks_and_prints_a_table(tutorial):
    result, out = tutorial
    lines = result.stdout.strip().splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["notebook", "status"]))
    assert lines[header].split() == ["notebook", "status", "seconds", "executed", "copy"]
    rows = [line.split() for line in lines[header + 1:]]
    name, status, seconds, copy = rows[0]  # tiny runs anywhere, first
    assert (name, status) == ("00_environment.ipynb", "ok") and float(seconds) > 0
    assert (out / "tiny" / "00_environment.ipynb").is_file() and copy.endswith("tiny/00_environment.ipynb")
    from helpers.checks import preflight
    from helpers.recipes import read_recipe

    for name in ("glm4-9b", "glm4-9b-qlora"):  # each GPU recipe either ran, or was left out with the reason
        ran = (out / name / "00_environment.ipynb").is_file()
        assert ran or f"not running {name}: " in result.stdout
        if not ran:
            with pytest.raises(Exception):
                preflight(read_recipe(name))
    assert len(rows) == 1 + sum((out / name / "00_environment.ipynb").is_file() for name in ("glm4-9b", "glm4-9b-qlora"))
    assert str(REPO_ROOT) not in (out / "tiny" / "00_environment.ipynb").read_text(encoding="utf-8")  # no machine's folders


def test_an_executed_copy_names_paths_from_the_repository(tmp_path):
    from helpers.tutorial import name_paths_from_the_repository

    root = str(REPO_ROOT)
    cell = {"cell_type": "code", "source": [f"print('{root}/runs')"], "metadata": {}, "execution_count": 1,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": [f"output {root}/runs/adapter\n", f"in {root}\n"]},
                        {"output_type": "execute_result", "metadata": {}, "execution_count": 1,
                         "data": {"application/json": {"adapter_dir": f"{root}/runs/adapter", "other": f"{root}2/x"}}}]}
    copy = tmp_path / "copy.ipynb"
    copy.write_text(json.dumps({"cells": [cell], "metadata": {"papermill": {"input_path": f"{root}/notebooks/a.ipynb"}},
                                "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    name_paths_from_the_repository(copy)
    nb = json.loads(copy.read_text(encoding="utf-8"))
    (stream, result), = [nb["cells"][0]["outputs"]]
    assert stream["text"] == ["output runs/adapter\n", "in .\n"]
    assert result["data"]["application/json"] == {"adapter_dir": "runs/adapter", "other": f"{root}2/x"}  # another folder
    assert nb["metadata"]["papermill"]["input_path"] == "notebooks/a.ipynb"
    assert nb["cells"][0]["source"] == cell["source"]  # what was run stays as it was


def test_the_copies_of_a_series_name_no_folder_of_this_machine():
    from helpers.tutorial import series_parameters

    found = series_parameters("tiny", "runs/tiny")  # make tutorial's own folder
    assert found["OUTPUT_DIR"] == found["ADAPTER_DIR"] == "runs/tiny/adapter" and "MERGED_DIR" not in found
    assert "/reset" in found["CHAT_SCRIPT"]  # notebook 05 types it only in a headless run
    assert not [value for value in found.values() if str(REPO_ROOT) in str(value)]


def test_tutorial_command_rejects_an_unknown_notebook():
    from helpers.tutorial import main

    code, _, err = run_main(main, "--only", "99")
    assert code == 2 and "no notebooks matched" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_kernel_that_dies_stops_the_series_in_one_line(tmp_path):
    from helpers.tutorial import run_notebook

    dying = tmp_path / "99_dies.ipynb"  # what the system's out-of-memory killer does to a kernel
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nos._exit(9)")]), dying)
    status, _, _ = run_notebook(dying, tmp_path / "out", {})
    assert status.startswith("failed: the kernel died, most often out of memory")
