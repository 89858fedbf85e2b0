"""Shared code for the GLM-4 LoRA fine-tuning notebooks and command lines.

Each module is small and names the notebook that teaches it. Nothing here runs on import:
``import helpers`` only makes the submodules importable (``from helpers import profiles``).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class CourseError(Exception):
    """A problem a learner can fix, said in one sentence with the fix.

    Command lines print it without a traceback and exit with status 2; in Jupyter the
    ``_render_traceback_`` hook below makes IPython show just the sentence, and the cell
    still fails, so a headless papermill run stops there too.
    """

    def _render_traceback_(self):
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


def resolve(path) -> Path:
    """A path as the course writes it (relative to the repository root) made absolute."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def run_cli(main) -> None:
    """Run a command line's ``main()``; a CourseError becomes one line on stderr and exit 2."""
    import sys

    try:
        code = main()
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted by the user.", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def save_record(path, values: dict) -> Path:
    """Write a notebook's key results as JSON, so a headless run (and the tests) can check them."""
    import json

    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    return path
