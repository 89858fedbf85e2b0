"""Write the ``#@save`` functions of the notebooks into helpers/ (``make sync``): one direction, notebooks first.

A function a command line also needs is written in the notebook that teaches it, its ``def`` or ``class``
line marked ``#@save`` (d2l's pattern). A helpers module holds a block for each notebook it takes functions
from, between two marker lines; the first names the notebook and the functions, in the notebook's order:

    # ---- #@save from notebooks/05_adapter_chat.ipynb: load_adapter, reply (make sync writes this block) ----
    ...
    # ---- end of #@save ----

Edit the notebook, then run ``make sync``; ``--check`` changes nothing and lists the modules that would
change (the test suite runs it).

    python -m helpers.sync            # rewrite the blocks
    python -m helpers.sync --check    # exit 1 if a block differs from its notebook
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

from helpers import REPO_ROOT, CourseError, run_cli, shown

BEGIN = re.compile(r"^# ---- #@save from (notebooks/[\w.]+\.ipynb): ([\w, ]+) \(make sync writes this block\) ----$")
END = "# ---- end of #@save ----"


def saved_definitions(notebook: Path) -> dict[str, str]:
    """The notebook's top-level defs and classes whose first line is marked #@save: name -> their text."""
    found = {}
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and "#@save" in lines[node.lineno - 1]:
                start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
                found[node.name] = "\n".join(lines[start:node.end_lineno])
    return found


def synced(path: Path) -> str:
    """The module's text with every #@save block written from its notebook."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        out.append(lines[i])
        match = BEGIN.match(lines[i])
        if match:
            notebook, names = REPO_ROOT / match.group(1), [n.strip() for n in match.group(2).split(",")]
            saved = saved_definitions(notebook)
            missing = [n for n in names if n not in saved]
            if missing:
                raise CourseError(f"{shown(path)}: {missing[0]} is not marked #@save in {match.group(1)}: mark its "
                                  "def line there, or take it out of the block's list.")
            out.append("\n\n\n".join(saved[n] for n in names))
            end = lines.index(END, i)
            out.append(END)
            i = end
        i += 1
    return "\n".join(out) + "\n"


def blocks() -> dict[str, list[str]]:
    """Every block's notebook and functions: 'notebooks/...ipynb' -> names, over all of helpers/."""
    found = {}
    for path in sorted((REPO_ROOT / "helpers").glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := BEGIN.match(line):
                found.setdefault(match.group(1), []).extend(n.strip() for n in match.group(2).split(","))
    return found


def stale() -> list[Path]:
    """The helpers modules whose #@save blocks differ from their notebooks."""
    return [path for path in sorted((REPO_ROOT / "helpers").glob("*.py"))
            if synced(path) != path.read_text(encoding="utf-8")]


def main(argv=None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    changed = stale()
    for path in changed:
        print(f"{shown(path)}: {'differs from its notebook (run `make sync`)' if check else 'written'}")
        if not check:
            path.write_text(synced(path), encoding="utf-8")
    if not changed:
        print("every #@save block is as its notebook writes it")
    return 1 if check and changed else 0


if __name__ == "__main__":
    run_cli(main)
