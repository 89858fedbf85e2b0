"""Kits for students on another system, made from this one: uv resolves the pinned packages for that system, pip
downloads that system's wheels, and a package published only as source must be pure Python.

Used by ``python -m helpers.classroom kit --platform ...`` (``make kit PLATFORM=...``); described in docs/workshop.md,
section 3. pip alone cannot do it: ``pip download --platform`` evaluates the packages' markers for the machine it runs
on, and asks for torch's Linux-only CUDA packages on Windows.
"""

from __future__ import annotations

import importlib.util
import os
import platform as host
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers import CourseError

# The students' systems a kit can be made for from any machine: pip's platform tag -> the target uv resolves for, and
# what that system's Python reports (sys.platform, platform.machine()). torch 2.13.0's macOS wheels need macOS 14.
PLATFORMS = {
    "win_amd64": ("x86_64-pc-windows-msvc", ("win32", "amd64")),
    "macosx_14_0_arm64": ("aarch64-apple-darwin", ("darwin", "arm64")),
    "manylinux_2_28_x86_64": ("x86_64-manylinux_2_28", ("linux", "x86_64")),
}


def this_system() -> tuple[str, str]:
    """This machine as PLATFORMS names systems: (sys.platform, the machine in lower case)."""
    return sys.platform, host.machine().lower()


def this_python() -> str:
    """The version of the Python running this, as a kit records it: "3.11"."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def uv_command() -> list[str]:
    """How to run uv, which resolves a kit's packages for another system (pip resolves for this one only)."""
    if importlib.util.find_spec("uv"):
        return [sys.executable, "-m", "uv"]
    if shutil.which("uv"):
        return [shutil.which("uv")]
    raise CourseError('a kit for another system needs uv to resolve its packages: run `pip install -e ".[kit]"` '
                      "(or `pip install uv`), then make the kit again.")


def resolve_for(platform: str, requirements: list[str], python: str) -> list[str]:
    """The full pinned set (``name==version``) that ``requirements`` need on ``platform`` with Python ``python``:
    uv evaluates the packages' markers for that system (pip would evaluate them for this one, and ask for
    torch's Linux-only CUDA packages on Windows)."""
    target = PLATFORMS[platform][0]
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp) / "requirements.in"
        wanted.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        done = subprocess.run([*uv_command(), "pip", "compile", str(wanted), "--python-platform", target,
                               "--python-version", python, "--no-header", "--no-annotate", "--quiet"],
                              capture_output=True, text=True, env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CourseError(f"uv could not resolve the course's packages for {platform} ({last}): check the network "
                          "or the package index, and run again.")
    return [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]


def platform_tags(platform: str) -> list[str]:
    """Every platform tag a pip on ``platform`` accepts, newest first: macOS 14 takes wheels built for 11 to 14 and
    universal2, a Linux with glibc 2.28 takes manylinux wheels for glibc 2.5 to 2.28."""
    from packaging import tags

    if platform.startswith("macosx_"):
        return list(tags.mac_platforms((14, 0), "arm64"))
    if platform.startswith("manylinux_"):
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        return [name for v in range(28, 4, -1)
                for name in (f"manylinux_2_{v}_x86_64", *([f"{legacy[v]}_x86_64"] if v in legacy else []))]
    return [platform]


def wheel_tags(platform: str, python: str) -> set:
    """The wheel tags a CPython ``python`` on ``platform`` installs, as pip there would accept them."""
    from packaging import tags

    version = tuple(int(part) for part in python.split("."))
    platforms = platform_tags(platform)
    return {*tags.cpython_tags(version, platforms=platforms),
            *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)}


def missing_wheels(wheels: Path, pins: list[str], platform: str, python: str) -> list[str]:
    """The pins with no wheel in ``wheels`` that installs on ``platform``."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    accepted, found = wheel_tags(platform, python), set()
    for wheel in wheels.glob("*.whl"):
        name, version, _, wheel_tag = parse_wheel_filename(wheel.name)
        if wheel_tag & accepted:
            found.add((name, version.public))  # torch 2.13.0+cpu is a torch==2.13.0, as pip sees it
    return [pin for pin in pins if (canonicalize_name(pin.split("==")[0]), pin.split("==")[1]) not in found]


def download_for(platform: str, pins: list[str], wheels: Path, python: str) -> None:
    """Wheels for ``platform``: pip downloads each resolved pin as that system's pip would choose it (no resolving
    here: uv did that). A package published only as source must be pure Python: it is built into a wheel here,
    so the students' machines need no compiler."""
    from packaging.utils import parse_sdist_filename, parse_wheel_filename

    accepted = [option for tag in platform_tags(platform) for option in ("--platform", tag)]  # pip widens none itself
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                           *accepted, "--python-version", python, "--implementation", "cp", *pins])
    if done.returncode:
        raise CourseError("pip could not download every wheel: check the network or the package index, and run again.")
    for source in [*wheels.glob("*.tar.gz"), *wheels.glob("*.zip")]:
        name = parse_sdist_filename(source.name)[0]
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                                str(wheels), str(source)], capture_output=True, text=True)
        found = (parse_wheel_filename(w.name) for w in wheels.glob("*.whl"))
        pure = [tags for wheel, _, _, tags in found if wheel == name and all(tag.platform == "any" for tag in tags)]
        if built.returncode or not pure:
            raise CourseError(f"{source.name} has no wheel for {platform} and is not pure Python: "
                              f"make this kit on a {platform} machine instead.")
        source.unlink()
    missing = missing_wheels(wheels, pins, platform, python)
    if missing:
        raise CourseError(f"no wheel for {platform} of {', '.join(missing)}: make this kit on a {platform} machine.")
