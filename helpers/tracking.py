"""Experiment tracking with SwanLab, offline-first: it never waits for input.

Taught in notebook 04. ``auto`` picks ``cloud`` when an API key is stored (``swanlab login``) or set
(``SWANLAB_API_KEY``), else ``local``: the run is written to swanlog/ and opened with
``swanlab watch swanlog``. ``offline`` writes a run to upload later with ``swanlab sync``;
``disabled`` writes nothing. ``SWANLAB_MODE`` in the environment chooses too. Transformers'
SwanLab reporter needs a run started first, so ``start_tracking`` runs before the trainer is built.
"""

from __future__ import annotations

import os

from helpers import CourseError, resolve

MODES = ("auto", "cloud", "local", "offline", "disabled")
PROJECT = "glm4-lora-course"


def log_dir() -> str:
    """Where local and offline runs are written: SWANLAB_LOG_DIR, else swanlog/ in the repository.

    The default is given relative to the working directory (``swanlog`` or ``../swanlog``), so the lines SwanLab
    prints name no machine's folders, and stay true in a copied notebook."""
    if os.environ.get("SWANLAB_LOG_DIR"):
        return os.environ["SWANLAB_LOG_DIR"]
    try:
        return os.path.relpath(resolve("swanlog"))
    except ValueError:  # Windows: another drive than the working directory's
        return str(resolve("swanlog"))


def swanlab_state() -> tuple[str, str]:
    """The SwanLab mode a run will use here, and why (no prompt, no network)."""
    if os.environ.get("SWANLAB_MODE"):
        return os.environ["SWANLAB_MODE"], "set by SWANLAB_MODE"
    try:
        from swanlab import Settings

        logged_in = bool(Settings().api_key)
    except Exception:  # a broken config file must not stop the check
        logged_in = False
    if logged_in:
        return "cloud", "an API key is stored (swanlab login) or set in SWANLAB_API_KEY"
    return "local", "no API key: runs are written to swanlog/ and viewed with `swanlab watch`"


def start_tracking(mode: str = "auto", name: str | None = None, config: dict | None = None) -> str:
    """Start a SwanLab run in ``mode`` and say so in one line; returns the mode used.

    A cloud run that cannot start (no key, no network) falls back to local; ``disabled`` starts nothing.
    """
    if mode not in MODES:
        raise CourseError(f"unknown tracking mode {mode!r}: choose one of {', '.join(MODES)}.")
    why = "asked for"
    if mode == "auto":
        mode, why = swanlab_state()
        mode = "cloud" if mode == "online" else mode
    if mode == "disabled":
        print("tracking: off (nothing is written)")
        return mode
    import swanlab

    kwargs = dict(project=PROJECT, name=name, config=config, log_dir=log_dir(), reinit=True)
    try:
        swanlab.init(mode="online" if mode == "cloud" else mode, **kwargs)
    except Exception as err:  # no key, no network, a refused login: keep the run, locally
        if mode != "cloud":
            raise
        print(f"SwanLab cloud did not start ({type(err).__name__}); logging locally instead")
        mode, why = "local", "cloud failed"
        swanlab.init(mode="local", **kwargs)
    print(f"tracking: SwanLab {mode} ({why})")  # where the run lies and how to view it: SwanLab's own lines above
    return mode
