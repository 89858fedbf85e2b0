"""Shared code for the GLM-4 LoRA fine-tuning notebooks and command lines.

The code a learner must understand is written in the notebooks; the functions a command line also
needs are marked ``#@save`` there and kept here as the same text (tests/test_course_shape.py holds
them equal). Each module names the notebook that teaches it. Nothing runs on import but quieting
two harmless messages (below).
"""

import logging
import warnings
from pathlib import Path

# bitsandbytes on a CPU offers an optional faster 4-bit kernel that it would fetch from the Hugging Face hub,
# and says so in red on import ("Failed to load CPU gemm_4bit_forward from kernels-community ... pip install
# kernels") on CPUs with AVX512-BF16. Nothing is missing without it, so the course keeps that one logger quiet.
# transformers imports bitsandbytes as soon as its Trainer is imported, so this must run first: each notebook
# imports its helpers before any library (tests/test_course_shape.py holds it).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PEFT still reads transformers' `is_gradient_checkpointing`, renamed `is_activation_checkpointing`, and each read
# prints a FutureWarning under the cell that has nothing to do with the learner's code.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

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


def shown(path) -> str:
    """A path as a learner should read it: relative to the repository root when it is inside it."""
    path = Path(path)
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


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
