"""Experiment tracking with SwanLab, offline-first: it never waits for input.

Taught in notebook 04. ``auto`` picks ``cloud`` when an API key is stored (``swanlab login``) or set
(``SWANLAB_API_KEY``), else ``local``: the run is written to swanlog/ and opened with
``swanlab watch swanlog``. ``offline`` writes a run to upload later with ``swanlab sync``;
``disabled`` writes nothing. Transformers' SwanLab reporter needs a run started first, so
``start_run`` runs before the trainer is built.
"""

from __future__ import annotations

from helpers import CourseError, resolve

MODES = ("auto", "cloud", "local", "offline", "disabled")
LOG_DIR = "swanlog"


def resolve_mode(mode: str = "auto") -> tuple[str, str]:
    """The concrete mode for ``mode`` and why, without prompting or touching the network."""
    from helpers.env import swanlab_state

    if mode not in MODES:
        raise CourseError(f"unknown tracking mode {mode!r}: choose one of {', '.join(MODES)}.")
    if mode != "auto":
        return mode, "asked for"
    found, why = swanlab_state()
    return ("cloud" if found == "online" else found), why


def start_run(mode: str, project: str, name: str, config: dict):
    """Start a SwanLab run (None when disabled); a cloud run that cannot start falls back to local."""
    if mode == "disabled":
        return None
    import swanlab

    import os

    log_dir = os.environ.get("SWANLAB_LOG_DIR") or str(resolve(LOG_DIR))
    kwargs = dict(project=project, name=name, config=config, log_dir=log_dir, reinit=True)
    try:
        return swanlab.init(mode="online" if mode == "cloud" else mode, **kwargs)
    except Exception as err:  # no key, no network, a refused login: keep the run, locally
        if mode != "cloud":
            raise
        print(f"SwanLab cloud did not start ({type(err).__name__}); logging locally to {LOG_DIR}/ instead")
        return swanlab.init(mode="local", **kwargs)


def active() -> bool:
    try:
        import swanlab

        return swanlab.get_run() is not None
    except Exception:  # no run: get_run raises
        return False


def log_texts(key: str, texts: list[str], step: int) -> None:
    """Log texts (generated answers) to the active run; without one, nothing happens."""
    if active():
        import swanlab

        swanlab.log({key: [swanlab.Text(t) for t in texts]}, step=step)


def finish() -> None:
    if active():
        import swanlab

        swanlab.finish()
