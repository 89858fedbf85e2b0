"""The pinned environment and the checks notebook 00 shows."""

import re

import yaml

from helpers import REPO_ROOT
from helpers.env import check_hubs, pinned_versions, run_checks
from helpers.machine import choose


def test_environment_yml_carries_the_same_pins_as_pyproject():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for line in pip:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.split("#")[0].strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    assert pins == pinned_versions()
    assert pins["torch"] == "2.13.0"
    assert any(line.startswith("-e .") for line in pip)
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_pinned_exactly():
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(pinned_versions()) == len(deps)


def test_checks_cover_what_notebook_00_promises():
    checks = {c.name: c for c in run_checks(timeout=1.0)}
    assert all(checks[name].status == "ok" for name in pinned_versions())  # the venv matches its pins
    for name in ("python", "cuda", "disk", "weights/tiny-glm4", "weights/glm-4-9b-hf",
                 "Hugging Face", "ModelScope", "swanlab", "recipe"):
        assert name in checks
    assert checks["weights/glm-4-9b-hf"].detail.startswith("missing: python -m helpers.download")
    assert checks["recipe"].detail.startswith(choose()[0].name + ":")  # what auto picks on this machine


def test_unreachable_hub_is_a_warning_not_a_hang(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hf = next(c for c in check_hubs(timeout=1.0) if c.name == "Hugging Face")
    assert hf.status == "warn" and "not reachable" in hf.detail and "HF_HUB_OFFLINE=1" in hf.detail


def test_packaging_says_what_the_code_needs_and_keeps_test_tools_apart():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib and the helpers' typing need 3.11
    runtime = {re.split(r"[=<>]", d)[0].lower() for d in project["dependencies"]}
    assert not runtime & {"pytest", "pytest-xdist", "selenium"}  # a learner's environment does not need the test tools
    assert {d.split("==")[0] for d in project["optional-dependencies"]["test"]} == {"pytest", "pytest-xdist", "selenium", "uv"}
    assert project["optional-dependencies"]["kit"] == ["uv==0.13.9"]  # kits for other systems: make kit PLATFORM=...
    for comment in re.findall(r"tests/\S+\.py", (REPO_ROOT / "pyproject.toml").read_text()):
        assert (REPO_ROOT / comment).is_file(), comment
