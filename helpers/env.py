"""Environment checks: what this machine has, and what the course will run on it.

Taught in notebook 00. The GPU itself is read by ``helpers.memory.gpu_info``, so notebooks never
call ``torch.cuda`` directly.

    python -m helpers.env        # the same table notebook 00 shows
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata

from helpers import REPO_ROOT, resolve, run_cli
from helpers.download import hub_reachable
from helpers.families import FAMILIES
from helpers.machine import choose, estimate, fits, gpu_info, gpu_recipes
from helpers.recipes import read_recipe, recipe_names
from helpers.tracking import swanlab_state

HUBS = {
    "Hugging Face": lambda: os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
    "ModelScope": lambda: "https://www.modelscope.cn",
}


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


def pinned_versions() -> dict[str, str]:
    """The ``name==version`` pins from pyproject.toml, keyed by lower-case name."""
    import tomllib

    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {
        m.group(1).lower(): m.group(2)
        for m in (re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", d) for d in deps)
        if m
    }


def check_versions() -> list[Check]:
    """Python and every pinned package against pyproject.toml."""
    py_ok = sys.version_info >= (3, 11)
    checks = [Check("python", "ok" if py_ok else "fail", platform.python_version()
                    + ("" if py_ok else ": the course needs Python 3.11 or newer"))]
    for name, want in pinned_versions().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            checks.append(Check(name, "fail", f"missing, pinned {want}: run `make setup`"))
            continue
        same = have.split("+")[0] == want  # torch reports 2.13.0+cpu or 2.13.0+cu128
        checks.append(Check(name, "ok" if same else "warn",
                            have if same else f"{have}, pinned {want}: run `make setup`"))
    return checks


def check_gpu() -> list[Check]:
    """CUDA device, its memory and bf16 support, and the largest GPU recipe they fit (``helpers.machine.fits``)."""
    gpu = gpu_info()
    if gpu is None:
        return [Check("cuda", "warn", "no CUDA GPU: the tiny recipe runs on the CPU")]
    on_this_gpu = {"gpu": gpu, "bitsandbytes": True}  # the GPU alone: packages and weights are rows of their own
    reasons = {recipe.name: fits(recipe, on_this_gpu) for recipe in gpu_recipes()}
    fitting = [name for name, reason in reasons.items() if reason is None]
    advice = (f"fits recipe {fitting[0]} (needs about {estimate(read_recipe(fitting[0]))['total']:.0f} GB)" if fitting
              else list(reasons.values())[-1])
    return [
        Check("cuda", "ok", f"{gpu['count']} x {gpu['name']} (compute capability {gpu['capability']})"),
        Check("gpu memory", "ok" if fitting else "warn", f"{gpu['total_gb']:.1f} GB on GPU 0: {advice}"),
        Check("bf16", "ok" if gpu["bf16"] else "warn", "supported" if gpu["bf16"] else
              "not supported: the course trains GLM-4 in bf16 only (T4 and V100 lack it)"),
    ]


def check_weights() -> list[Check]:
    """Free disk for the downloadable weights still missing, and which models of the recipes are in weights/."""
    weights = resolve("weights")
    free_gb = shutil.disk_usage(weights if weights.exists() else REPO_ROOT).free / 1024**3
    downloads = {path: size for f in FAMILIES.values() for path, (_, _, size) in f.downloads.items()}
    need = sum(size for path, size in downloads.items() if not (resolve(path) / "config.json").exists())
    checks = [Check("disk", "ok" if free_gb >= need else "warn",
                    f"{free_gb:.0f} GB free; the 9B weights still missing need {need:.0f} GB")]
    paths = {path: recipe for recipe in map(read_recipe, recipe_names())  # the QLoRA recipe shares the 9B's
             for path in filter(None, [recipe["model_name_or_path"], recipe.get("chat_model_path")])}
    for path, recipe in paths.items():
        present = (resolve(path) / "config.json").is_file()
        fix = "make tiny" if recipe.device == "cpu" else "python -m helpers.download glm4-9b"
        checks.append(Check(path, "ok" if present else "warn", "present" if present else f"missing: {fix}"))
    return checks


def check_hubs(timeout: float = 3.0) -> list[Check]:
    """Whether the Hugging Face hub (or HF_ENDPOINT) and ModelScope answer, in parallel."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    with ThreadPoolExecutor(len(HUBS)) as pool:
        answers = dict(zip(HUBS, pool.map(lambda url: hub_reachable(url(), timeout), HUBS.values())))
    checks = []
    for hub, (ok, detail) in answers.items():
        if hub == "Hugging Face" and offline:
            detail += "; HF_HUB_OFFLINE=1 is set, so hub downloads are off"
        checks.append(Check(hub, "ok" if ok else "warn", f"{HUBS[hub]()} {detail}"))
    return checks


def check_tracking() -> list[Check]:
    mode, why = swanlab_state()
    return [Check("swanlab", "ok", f"{mode} mode: {why}")]


def check_recipe() -> list[Check]:
    recipe, reason = choose()
    return [Check("recipe", "ok", f"{recipe.name}: {reason}")]


def run_checks(timeout: float = 3.0) -> list[Check]:
    """Every check notebook 00 shows, in its order."""
    return (check_versions() + check_gpu() + check_weights() + check_hubs(timeout)
            + check_tracking() + check_recipe())


def checks_table(checks: list[Check]):
    """The checks as a pandas DataFrame, for display in a notebook."""
    import pandas as pd

    return pd.DataFrame([vars(c) for c in checks]).set_index("name")


def main() -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    run_cli(main)
