"""Classroom tools: student copies hold no solution and run; an offline kit installs a machine with no index."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import BROWSER, STUDENT_ATTEMPT_06, execute, type_student_attempt
from helpers import REPO_ROOT, CourseError
from helpers.classroom import PLACEHOLDER, install, pinned_requirements, venv_python, write_student_copies
from helpers.platforms import PLATFORMS, missing_wheels, resolve_for, this_system
from helpers.tutorial import free_port


def test_student_copies_leave_every_solution_blank(tmp_path):
    copies = write_student_copies(tmp_path / "student")
    assert [p.name for p in copies] == sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for copy in copies:
        original = json.loads((REPO_ROOT / "notebooks" / copy.name).read_text(encoding="utf-8"))
        student = json.loads(copy.read_text(encoding="utf-8"))
        solutions = [c for c in original["cells"] if "solution" in c["metadata"].get("tags", [])]
        answers = [c for c in student["cells"] if "answer" in c["metadata"].get("tags", [])]
        assert solutions and len(answers) == len(solutions) and len(student["cells"]) == len(original["cells"])
        assert all("".join(c["source"]) == PLACEHOLDER for c in answers)
        assert not any("solution" in c["metadata"].get("tags", []) for c in student["cells"])
        student_code = {"".join(c["source"]) for c in student["cells"] if c["cell_type"] == "code"}
        assert not student_code & {"".join(c["source"]) for c in solutions}, copy.name  # no solution text left


def test_the_kit_installs_with_the_python_of_each_platform(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    here = venv_python(tmp_path / "venv")
    assert here.is_file() and subprocess.run([str(here), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                             text=True).stdout.strip() == str(tmp_path / "venv")
    assert venv_python(tmp_path / "venv", windows=True).relative_to(tmp_path).parts == ("venv", "Scripts", "python.exe")
    assert venv_python(tmp_path / "venv", windows=False).relative_to(tmp_path).parts == ("venv", "bin", "python")


@pytest.mark.slow
def test_student_copies_run(tmp_path, adapter):
    """Each copy runs once under papermill, up to and through its blank exercises (04 and 05 kept short; 05 and 06
    load the adapter of notebook 04's default run, never whatever lies in outputs/). Where Chromium is installed, the
    copies of 04, 05 and 06 run in JupyterLab instead (test_browser.py), as short: not twice."""
    copies = write_student_copies(tmp_path / "student")
    settings = {"04": dict(RECIPE="tiny", OUTPUT_DIR=str(tmp_path / "adapter"), MAX_STEPS=2, TRACKING="disabled"),
                "05": dict(ADAPTER_DIR=str(adapter), MERGED_DIR=str(tmp_path / "merged"), HELDOUT_LIMIT=1,
                           MAX_NEW_TOKENS=32, CHAT_SCRIPT=["你好"]),
                "06": dict(ADAPTER_DIR=str(adapter), MERGED_DIR=str(tmp_path / "merged-06"), PORT=free_port())}
    nb06 = next(c for c in copies if c.name.startswith("06"))
    type_student_attempt(nb06)
    here = [c for c in copies if not (BROWSER and c.name[:2] in settings)]
    assert [c.name[:2] for c in here] == (["00", "01", "02", "03"] if BROWSER else [f"0{i}" for i in range(7)])
    for copy in here:
        run = execute(copy, tmp_path / copy.stem, **settings.get(copy.name[:2], {"RECIPE": "tiny"}))
        assert run.status == "ok", (copy.name, run.status)
        assert run.record is not None and run.stderr == []
        if copy == nb06:
            answered = next(c for c in run.notebook.cells if c.source == STUDENT_ATTEMPT_06)
            assert "".join(o.get("text", "") for o in answered.outputs).strip() == "length"


@pytest.mark.slow
def test_a_kit_installs_a_machine_with_no_index(tmp_path, tiny_dir):
    kit = tmp_path / "kit"
    subset = ["six==1.16.0"]  # a small wheel stands for the pinned set: CI downloads no gigabytes
    made = subprocess.run([sys.executable, "-m", "helpers.classroom", "kit", "--out", str(kit), "--requirements", *subset],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert list((kit / "wheels").glob("six-1.16.0-*.whl")) and (kit / "course" / "weights/tiny-glm4/config.json").is_file()
    assert (kit / "course" / "notebooks" / "04_lora_sft.ipynb").is_file() and "kit ready" in made.stdout
    assert json.loads((kit / "kit.json").read_text())["system"] == list(this_system())  # made for a machine like this
    machine = tmp_path / "machine"  # a student's copy of the course, without the models
    shutil.copytree(kit / "course", machine, ignore=shutil.ignore_patterns("weights"))
    (machine / "weights").mkdir()
    installed = subprocess.run([sys.executable, "-m", "helpers.classroom", "install", str(kit), "--requirements", *subset],
                               cwd=machine, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    check = subprocess.run([str(machine / ".venv/bin/python"), "-c", "import six; print(six.__version__)"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "1.16.0"  # installed from the kit's wheels alone (--no-index)
    assert (machine / "weights/tiny-glm4/model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    up_to_date = subprocess.run(["make", "-q", "weights/tiny-glm4/config.json"], cwd=machine, capture_output=True)
    assert up_to_date.returncode == 0  # copied, so make builds nothing
    in_place = subprocess.run([sys.executable, "-m", "helpers.classroom", "install", str(kit), "--requirements", *subset],
                              cwd=kit / "course", capture_output=True, text=True, timeout=300)  # the kit's own course
    assert in_place.returncode == 0, in_place.stderr[-2000:]
    assert subprocess.run(["make", "-q", "weights/tiny-glm4/config.json"], cwd=kit / "course").returncode == 0
    refused = subprocess.run([sys.executable, "-m", "helpers.classroom", "install", str(tmp_path)], cwd=machine,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "is not a course kit" in refused.stderr


def test_a_kit_for_another_system_counts_only_the_wheels_that_install_there(tmp_path):
    for name in ("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.13.0-cp311-none-macosx_11_0_arm64.whl",
                 "markupsafe-3.0.3-cp311-cp311-win_amd64.whl", "pwinput-1.0.3-py3-none-any.whl",
                 "pyyaml-6.0.3-cp311-cp311-manylinux2014_x86_64.whl", "regex-2026.1.1-cp311-cp311-win_amd64.whl"):
        (tmp_path / name).touch()  # only the names count: their tags say where each one installs
    pins = ["torch==2.13.0", "markupsafe==3.0.3", "pwinput==1.0.3", "pyyaml==6.0.3", "regex==2026.1.1"]
    assert missing_wheels(tmp_path, pins, "win_amd64", "3.11") == ["torch==2.13.0", "pyyaml==6.0.3"]
    assert missing_wheels(tmp_path, pins, "manylinux_2_28_x86_64", "3.11") == ["markupsafe==3.0.3", "regex==2026.1.1"]
    assert missing_wheels(tmp_path, pins, "macosx_14_0_arm64", "3.11") == ["markupsafe==3.0.3", "pyyaml==6.0.3",
                                                                          "regex==2026.1.1"]
    assert missing_wheels(tmp_path, pins, "win_amd64", "3.12") == pins[:2] + pins[3:]  # cp311 wheels need 3.11


def test_a_kit_for_another_system_refuses_to_install_here(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "kit.json").write_text(json.dumps({"platform": "win_amd64", "system": ["win32", "amd64"], "python": "3.11"}))
    if this_system() == ("win32", "amd64"):
        pytest.skip("this machine is the system the kit is for")
    here = re.escape(" ".join(this_system()))
    with pytest.raises(CourseError, match=rf"a kit for win32 amd64 with Python 3.11, and this is {here} .*PLATFORM="):
        install(tmp_path)
    assert not (tmp_path / ".venv").exists()


@pytest.mark.slow
def test_a_kit_for_windows_made_here_holds_a_windows_wheel_for_every_package(tmp_path):
    """The real pinned set, downloaded for Windows from this Linux machine (about 0.36 GB): markers evaluated for
    Windows (colorama, pywinpty; no CUDA packages), and swanlab's source-only pwinput built into a pure wheel."""
    kit = tmp_path / "kit"
    made = subprocess.run([sys.executable, "-m", "helpers.classroom", "kit", "--platform", "win_amd64", "--python",
                           "3.11", "--out", str(kit)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    wheels = sorted(p.name for p in (kit / "wheels").iterdir())
    assert all(name.endswith(".whl") for name in wheels)  # no source left to build on a student's machine
    pins = resolve_for("win_amd64", [*pinned_requirements(), "setuptools>=68"], "3.11")
    assert len(pins) > 100 and missing_wheels(kit / "wheels", pins, "win_amd64", "3.11") == []
    names = {name.split("-")[0].lower() for name in wheels}
    assert {"torch", "bitsandbytes", "colorama", "pywinpty", "pwinput"} <= names and not any(n.startswith("nvidia_") and "_cu" in n for n in names)
    assert any(name.startswith("torch-2.13.0-cp311-cp311-win_amd64") for name in wheels)
    assert json.loads((kit / "kit.json").read_text())["system"] == ["win32", "amd64"]
    refused = subprocess.run([sys.executable, "-m", "helpers.classroom", "install", str(kit)], cwd=tmp_path,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "is a kit for win32 amd64" in refused.stderr


@pytest.mark.slow
def test_the_other_systems_resolve_to_their_own_packages():
    """macOS has no CUDA wheels, Linux pulls PyTorch's CUDA packages from PyPI (several GB: docs/workshop.md)."""
    wanted = pinned_requirements()
    mac, linux = (resolve_for(platform, wanted, "3.11") for platform in ("macosx_14_0_arm64", "manylinux_2_28_x86_64"))
    assert "torch==2.13.0" in mac and "torch==2.13.0" in linux and set(PLATFORMS) >= {"macosx_14_0_arm64"}
    cuda = [pin for pin in linux if pin.startswith("nvidia-") and "-cu" in pin]  # nvidia-cublas-cu13==... and the rest
    assert len(cuda) >= 10 and not any(pin.startswith("nvidia-") and "-cu" in pin for pin in mac)
