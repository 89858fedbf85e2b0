"""Classroom tools: student copies of the notebooks, and an offline kit to install a room of machines.

Described in docs/workshop.md, the instructor's guide. Nothing heavy is imported, so ``install`` runs
with any Python 3.11 before the course's environment exists.

    python -m helpers.classroom student                  # student/NN_*.ipynb: the solutions left blank
    python -m helpers.classroom kit --out kit            # wheels, tiny model, data and course, for a USB stick
    python -m helpers.classroom kit --out kit --with-9b  # ... and the 9B weights in weights/, if present
    python -m helpers.classroom kit --platform win_amd64 # a kit for students on Windows, made here (needs uv)
    python3 -m helpers.classroom install /media/usb/kit  # on a student machine, with no network
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT, CourseError, resolve, run_cli, shown
from helpers.families import FAMILIES
from helpers.platforms import PLATFORMS, download_for, resolve_for, this_python, this_system
from helpers.tiny import DEFAULT_OUT as TINY

PLACEHOLDER = "# 在这里写你的答案"
NINE_B = tuple(path for family in FAMILIES.values() for path in family.downloads)  # the released weights, if here


def student_copy(notebook: dict) -> dict:
    """The notebook with every solution cell replaced by an empty answer cell, and no outputs."""
    cells = []
    for cell in notebook["cells"]:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            cell = {"cell_type": "code", "id": cell.get("id", "") + "-answer", "metadata": {"tags": ["answer"]},
                    "source": [PLACEHOLDER], "outputs": [], "execution_count": None}
        cells.append(cell)
    return {**notebook, "cells": cells}


def write_student_copies(out="student") -> list[Path]:
    """student/NN_*.ipynb for every notebook; the course's own notebooks are left as they are."""
    out = resolve(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = student_copy(json.loads(path.read_text(encoding="utf-8")))
        (out / path.name).write_text(json.dumps(notebook, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        written.append(out / path.name)
    print(f"wrote {len(written)} student copies to {shown(out)}/ (solutions left blank: {PLACEHOLDER})")
    return written


def pinned_requirements(extras=("qlora",)) -> list[str]:
    """The course's pinned packages (pyproject.toml), with the extras asked for."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def copy_tree(source: Path, target: Path) -> None:
    """A copy whose files are new (their times are now): make then sees them as built, not stale."""
    shutil.copytree(source, target, copy_function=shutil.copy, dirs_exist_ok=True)


def make_kit(out=None, requirements=None, with_9b=False, platform=None, python=None) -> Path:
    """A folder for a USB stick: wheels for the pinned packages, the course, the tiny model, optionally the 9B.
    ``platform`` (a key of PLATFORMS) makes it for students on another system, for Python ``python``."""
    if platform and platform not in PLATFORMS:
        raise CourseError(f"no kit for {platform}: choose one of {', '.join(PLATFORMS)}.")
    python = python or this_python()
    out = resolve(out or (f"kit-{platform}" if platform else "kit"))
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = requirements or [*pinned_requirements(), "setuptools>=68"]  # setuptools builds the course offline
    print(f"downloading wheels for {len(requirements)} pinned packages (and what they need) into {shown(wheels)}/"
          + (f", for {platform} and Python {python}" if platform else ""))
    if platform:
        pins = resolve_for(platform, requirements, python)
        download_for(platform, pins, wheels, python)
        system = PLATFORMS[platform][1]
    else:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), *requirements])
        if done.returncode:
            raise CourseError("pip could not download every wheel: check the network or the package index, and run again.")
        system = this_system()
    kit_info = {"platform": platform or "this machine", "system": list(system), "python": python}
    (out / "kit.json").write_text(json.dumps(kit_info, indent=1) + "\n", encoding="utf-8")
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # the course itself, as committed: notebooks, helpers, data, tests
        (out / "course" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, out / "course" / name)
    if not (resolve(TINY) / "config.json").is_file():
        raise CourseError(f"{TINY} is missing: build it with `make tiny`, then make the kit again.")
    copy_tree(resolve(TINY), out / "course" / TINY)
    for path in NINE_B if with_9b else ():
        if (resolve(path) / "config.json").is_file():
            copy_tree(resolve(path), out / "course" / path)
        else:
            print(f"{path} is not here: left out of the kit")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9
    print(f"kit ready in {shown(out)}/: {size:.2f} GB. On each machine: python3 -m helpers.classroom install KIT "
          "(from the kit's course/ folder, copied to the machine)")
    return out


def venv_python(venv: Path, windows: bool = os.name == "nt") -> Path:
    """The Python of a virtual environment: Scripts\\python.exe on Windows, bin/python elsewhere."""
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def install(kit, requirements=None) -> Path:
    """Install this course checkout from a kit with no network: the venv from its wheels, the models copied."""
    kit = Path(kit).resolve()
    if not (kit / "wheels").is_dir():
        raise CourseError(f"{kit} is not a course kit (no wheels/ in it): give the folder `make kit` wrote.")
    info = json.loads((kit / "kit.json").read_text(encoding="utf-8")) if (kit / "kit.json").is_file() else None
    here = (*this_system(), this_python())
    if info and (*info["system"], info["python"]) != here:
        raise CourseError(f"{kit} is a kit for {' '.join(info['system'])} with Python {info['python']}, and this is "
                          f"{' '.join(here[:2])} with Python {here[2]}: make one for this machine (make kit PLATFORM=...).")
    venv = REPO_ROOT / ".venv"
    if not venv_python(venv).exists():  # made by the Python that runs this, on any platform
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    target = ["-e", f"{REPO_ROOT}[qlora]"] if requirements is None else list(requirements)
    done = subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--no-index",
                           "--find-links", str(kit / "wheels"), *target])
    if done.returncode:
        raise CourseError(f"a package is missing from {kit / 'wheels'}: make the kit again on a machine like this one.")
    (venv / ".installed").touch()  # `make setup` sees the environment as installed
    for path in (TINY, *NINE_B):  # copied, not built: the tiny model is the same file everywhere
        source = kit / "course" / path
        if (source / "config.json").is_file() and source.resolve() != resolve(path):
            copy_tree(source, resolve(path))
    if (resolve(TINY) / "config.json").is_file():
        (resolve(TINY) / "config.json").touch()  # newer than the environment: `make tiny` builds nothing
    print(f"installed from {kit}: .venv/ and {', '.join(p for p in (TINY, *NINE_B) if resolve(p).is_dir())}")
    return venv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.classroom", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="write student copies of the notebooks")
    student.add_argument("--out", default="student")
    kit = commands.add_parser("kit", help="write an offline kit")
    kit.add_argument("--out", help="where (default kit/, or kit-PLATFORM/ with --platform)")
    kit.add_argument("--with-9b", action="store_true", help="add the 9B weights found in weights/")
    kit.add_argument("--requirements", nargs="+", help="these packages instead of the course's pinned set")
    kit.add_argument("--platform", choices=PLATFORMS, help="for students on this system (default: this machine's)")
    kit.add_argument("--python", help="for students with this Python, e.g. 3.12 (default: the one running this)")
    setup = commands.add_parser("install", help="install this checkout from a kit, offline")
    setup.add_argument("kit")
    setup.add_argument("--requirements", nargs="+", help="these packages instead of the course (a check of the kit)")
    args = parser.parse_args(argv)
    if args.command == "student":
        write_student_copies(args.out)
    elif args.command == "kit":
        make_kit(args.out, args.requirements, args.with_9b, args.platform, args.python)
    else:
        install(args.kit, args.requirements)
    return 0


if __name__ == "__main__":
    run_cli(main)
