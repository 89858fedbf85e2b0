"""The course's shape: notebooks teach in library terms, helpers stays thin and acyclic, one implementation.

A function a command line needs is written in the notebook that teaches it, marked ``#@save`` on its
``def``/``class`` line, and kept in helpers as the same text, character for character (d2l's pattern).
"""

import ast
import json
import re

import pytest

from helpers import REPO_ROOT, CourseError

HELPERS = REPO_ROOT / "helpers"
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_NAMES, MAX_LEVELS = 6, 5


def code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def definitions(source):
    """Top-level defs and classes of some Python source: name -> (text, marked #@save)."""
    tree, lines = ast.parse(source), source.splitlines()
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            found[node.name] = ("\n".join(lines[start:node.end_lineno]), "#@save" in lines[node.lineno - 1])
    return found


def helper_definitions():
    found = {}
    for path in sorted(HELPERS.glob("*.py")):
        for name, (text, saved) in definitions(path.read_text(encoding="utf-8")).items():
            found.setdefault(name, []).append((path.stem, text, saved))
    return found


def notebook_definitions():
    return {(path.name, name): (text, saved) for path in NOTEBOOKS for cell in code_cells(path)
            for name, (text, saved) in definitions(cell).items()}


def test_every_saved_function_is_written_into_helpers_by_make_sync():
    """One direction: the notebooks are the source; `make sync` writes their #@save blocks into helpers/."""
    from helpers.sync import blocks, saved_definitions, stale

    assert stale() == [], "a #@save block differs from its notebook: run `make sync` (edit the notebook, not helpers/)"
    listed = blocks()
    saved = 0
    for path in NOTEBOOKS:
        names = list(saved_definitions(path))
        saved += len(names)
        assert listed.get(f"notebooks/{path.name}", []) == names, (
            f"{path.name}: its #@save functions {names} are not all in a helpers block, in the notebook's order")
    assert saved >= 12  # load_model, the data functions, the callbacks, the chat, the measures, the serving


def test_the_sync_writes_a_block_from_its_notebook_and_refuses_a_name_not_saved(tmp_path, monkeypatch):
    import helpers.sync as sync

    (tmp_path / "helpers").mkdir()
    (tmp_path / "notebooks").mkdir()
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": ["def f(x):  #@save\n", "    return x\n"]},
                          {"cell_type": "code", "metadata": {}, "source": ["def g():\n", "    pass\n"]}]}
    (tmp_path / "notebooks/01_x.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    module = tmp_path / "helpers/m.py"
    header = "# ---- #@save from notebooks/01_x.ipynb: f (make sync writes this block) ----"
    module.write_text(f'"""M."""\n\n{header}\nold text\n{sync.END}\n', encoding="utf-8")
    monkeypatch.setattr(sync, "REPO_ROOT", tmp_path)
    assert sync.stale() == [module]
    assert sync.synced(module) == f'"""M."""\n\n{header}\ndef f(x):  #@save\n    return x\n{sync.END}\n'
    module.write_text(f"{header.replace(': f (', ': g (')}\n{sync.END}\n", encoding="utf-8")
    with pytest.raises(CourseError, match="g is not marked #@save in notebooks/01_x.ipynb"):
        sync.synced(module)


def test_every_saved_helper_is_taught_once_and_nothing_is_written_twice():
    taught = {}
    for (notebook, name), (_, marked) in notebook_definitions().items():
        taught.setdefault(name, []).append((notebook, marked))
    for name, copies in helper_definitions().items():
        for module, _, marked in copies:
            if marked:  # a #@save function in helpers is written in exactly one notebook, marked there too
                assert [m for _, m in taught.get(name, [])] == [True], \
                    f"helpers/{module}.py: {name} should be written, marked #@save, in exactly one notebook"
            else:  # a plain helper is never re-implemented in a notebook
                assert name not in taught, f"{taught[name][0][0]} re-implements helpers/{module}.py's {name}"


def imported_names(path):
    names = set()
    for cell in code_cells(path):
        for node in ast.walk(ast.parse(cell)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "helpers":
                names.update(alias.asname or alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("helpers") for a in node.names), f"{path.name}: import helpers by name"
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_a_handful_of_helper_names(path):
    names = imported_names(path)
    assert len(names) <= MAX_NAMES, f"{path.name} imports {len(names)} names from helpers: {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_the_helpers_before_any_library(path):
    """helpers/__init__.py quiets bitsandbytes' red kernel notice, which importing transformers prints on CPUs with
    AVX512-BF16 when the qlora extra is installed: that only works if the helpers are imported first."""
    first = ast.parse(code_cells(path)[0]).body
    imports = [node for node in first if isinstance(node, (ast.Import, ast.ImportFrom))]
    ours = [i for i, node in enumerate(imports) if isinstance(node, ast.ImportFrom) and node.module.startswith("helpers")]
    assert ours and ours == list(range(len(ours))), f"{path.name}: the first cell imports a library before the helpers"


def import_graph():
    graph = {}
    for path in HELPERS.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "helpers":
                deps.update(a.name for a in node.names if (HELPERS / f"{a.name}.py").is_file())
        graph[path.stem] = deps - {path.stem}
    return graph


def longest_chain(graph):
    """The longest chain of imports in ``graph`` (module -> modules it imports); raises on a cycle."""
    def chain(module, stack=()):
        if module in stack:
            raise ValueError("import cycle in helpers: " + " -> ".join([*stack, module]))
        return [module, *max((chain(dep, (*stack, module)) for dep in graph.get(module, ())), key=len, default=[])]

    return max((chain(m) for m in graph), key=len, default=[])


def test_helpers_have_no_import_cycle_and_few_levels():
    longest = longest_chain(import_graph())
    assert len(longest) <= MAX_LEVELS, "too deep: " + " -> ".join(longest)


def test_the_import_walk_finds_cycles_and_depth():
    with pytest.raises(ValueError, match="chat -> train -> chat"):
        longest_chain({"chat": {"train"}, "train": {"chat"}})
    deep = {f"m{i}": {f"m{i + 1}"} for i in range(6)}
    assert len(longest_chain(deep)) == 7 > MAX_LEVELS
    assert import_graph()["train"] >= {"sft", "checks", "formatting"}  # the walk sees real imports


@pytest.mark.parametrize("path", sorted(HELPERS.glob("*.py")), ids=lambda p: p.name)
def test_helpers_modules_are_short_and_name_their_notebook(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 260, f"{path.name} is more than a page or two"
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert doc, f"{path.name} has no module docstring"
    if any(saved for _, saved in definitions(source).values()):
        assert re.search(r"notebook 0\d", doc), f"{path.name} keeps #@save functions: its docstring names the notebook"


def test_lessons_carry_no_test_plumbing():
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        assert "RECORD_FILE" not in text and "save_record" not in text and "记录结果" not in text, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lessons_do_not_send_a_learner_into_the_test_suite(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    prose = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert not [text[:60] for text in prose if "tests/" in text]  # the course's tests are the course's plumbing
