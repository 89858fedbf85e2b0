"""Shared fixtures: the tiny GLM-4 (built once when missing), notebook runs, notebook 04's default run.

Train once, reuse everywhere: notebook 04 runs once per test run with its defaults (``nb04``, shared by the
pytest-xdist workers that ``make test`` starts), and its adapter
(``adapter``) is what the chat, evaluate, merge, serve and notebook 05/06 tests load. Tests that need training
or a notebook are marked ``slow``; ``make test-fast`` runs the rest.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1 ... under pytest-xdist; None in one process
if XDIST_WORKER:
    # Under pytest-xdist each worker, and every kernel and command it starts, computes on one thread: two workers
    # of PyTorch's default thread count on two cores wait on each other (notebook 05 ran over 10 minutes, not 3).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # What still computes on two threads (the tiny build fixes its count) waits for the slower thread by spinning,
    # and the other worker's process holds the second core: threads that sleep while they wait cut the tiny build
    # test from 19 s to 13 s beside a busy core (9.5 s alone).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from helpers import REPO_ROOT, resolve  # noqa: E402

NOTEBOOKS = REPO_ROOT / "notebooks"
# Debian's headless Chromium and its driver (.ci/run installs them): test_browser.py drives JupyterLab with them, and
# runs the student copies of notebooks 04-06 there, so that test_classroom.py runs those copies only where it cannot
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BROWSER = CHROMIUM.exists() and CHROMEDRIVER.exists()
# a student's answer to notebook 06's first exercise, typed into its blank cell: the server must be running for it
STUDENT_ATTEMPT_06 = ("reply = client.chat.completions.create(model=model_name, messages=question, max_tokens=8)\n"
                      "print(reply.choices[0].finish_reason)")


def type_student_attempt(path):
    """Notebook 06's student copy at ``path``, with STUDENT_ATTEMPT_06 typed into its first blank exercise."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    next(c for c in nb.cells if "answer" in c.metadata.get("tags", [])).source = STUDENT_ATTEMPT_06
    nbformat.write(nb, path)
# the files that wait for notebook 04 and take longest (make test's slowest list): notebook 05 runs its notebook, two
# short trainings included; the classroom's student copies run seven notebooks; the browser drives JupyterLab
LONGEST_WAITING = ("test_notebook_05.py", "test_classroom.py", "test_browser.py")
# the exercises' short trainings (60 steps in notebooks 04 and 05) run a few steps here: the tests read that they ran
# and what they print, not how far 60 steps get (notebook 05's exercise alone took 112 s of make test at one thread)
EXERCISE_STEPS = 4


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, notebook 04's file comes first and the files that load its adapter come last. The worker
    that takes notebook 04 starts its training at once, on one thread, while the other runs every test that needs no
    trained adapter: no worker waits, and no core is left idle (a worker blocked on the file lock computes nothing).
    In one process the order stays as collected."""
    if not XDIST_WORKER:
        return
    waits = {item.path for item in items if {"nb04", "adapter"} & set(item.fixturenames)}  # the closure of each test

    def order(item):
        if item.path.name == "test_notebook_04.py":
            return 0, 0
        if item.path in waits:  # the longest of them first, so that both workers finish at about the same time
            return 2, LONGEST_WAITING.index(item.path.name) if item.path.name in LONGEST_WAITING else len(LONGEST_WAITING)
        return 1, 0

    items.sort(key=order)


@pytest.fixture(scope="session")
def tiny_dir():
    """weights/tiny-glm4, built by `make tiny`, or here when a test run starts without it."""
    path = resolve("weights/tiny-glm4")
    if not (path / "config.json").is_file():
        from helpers.tiny import build

        build(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def training_tokenizer(tiny_dir):
    """The tiny tokenizer with GLM-4's training chat template, as notebook 04 and the training command set it."""
    from transformers import AutoTokenizer

    from helpers.families import GLM4

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.chat_template = GLM4.training_template.read_text(encoding="utf-8")
    return tokenizer


@pytest.fixture(scope="session")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def run_module(*args, env=None, timeout=120, input=None):
    """Run `python -m ...` from the repository root as a learner would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    for key, value in list(full_env.items()):
        if value is None:
            del full_env[key]
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=full_env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def labels_of(example):
    """An example's labels as TRL builds them from its assistant mask: the token where the mask is 1, else -100."""
    return [token if bit else -100 for token, bit in zip(example["input_ids"], example["assistant_masks"])]


def run_main(main, *args):
    """A command line's ``main(argv)`` in this process, exactly as ``run_cli`` runs it (a CourseError is one line on
    stderr and exit status 2): returns (exit status, stdout, stderr). For refusals that happen before any model
    loads, without paying a new interpreter's imports."""
    from helpers import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(lambda: main(list(args)))
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


class Executed:
    """An executed notebook: its status, its record (the JSON shown by the cell tagged `record`), its outputs."""

    def __init__(self, status, path):
        import nbformat

        self.status, self.path = status, path
        self.notebook = nbformat.read(path, as_version=4)
        self.outputs = [o for c in self.notebook.cells for o in c.get("outputs", [])]
        self.shown = json.dumps(self.outputs, ensure_ascii=False)
        # red text under a cell: a learner reads it as something to fix, so every one must have a reason
        self.stderr = ["".join(o["text"]) for o in self.outputs if o.get("name") == "stderr" and "".join(o["text"]).strip()]
        record = [c for c in self.notebook.cells if "record" in c.metadata.get("tags", [])]
        shown = [o["data"]["application/json"] for c in record for o in c.get("outputs", [])
                 if "application/json" in o.get("data", {})]
        self.record = shown[0] if shown else None


def execute(name_or_path, out_dir, source_edits=(), **parameters) -> Executed:
    """Run a notebook headless in a fresh kernel, as `make tutorial` does; ``source_edits`` are (old, new)
    replacements in its cells first, as a learner typing into them would make."""
    from helpers.tutorial import run_notebook

    path = Path(name_or_path)
    path = path if path.is_absolute() else NOTEBOOKS / path
    if source_edits:
        import nbformat

        nb = nbformat.read(path, as_version=4)
        for old, new in source_edits:
            cells = [c for c in nb.cells if old in c.source]
            assert len(cells) == 1, f"{old!r} is in {len(cells)} cells of {path.name}"
            cells[0].source = cells[0].source.replace(old, new)
        path = out_dir / "edited" / path.name
        path.parent.mkdir(exist_ok=True)
        nbformat.write(nb, path)
    status, _, executed = run_notebook(path, out_dir, parameters)
    return Executed(status, executed)


def run_cells(name, parameters=None, source_edits=()):
    """A notebook's code cells run in this process, top to bottom in one namespace, its parameters cell followed by
    ``parameters``, after ``source_edits`` ((old, new) replacements a learner would type): for the variants of a
    light notebook, without a second kernel. Returns (namespace, printed text, the exception that stopped it or None)."""
    import matplotlib

    matplotlib.use("Agg")  # plots are drawn, not shown
    cells = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "solution" not in c["metadata"].get("tags", [])]
    namespace, out = {"__name__": "__main__"}, io.StringIO()
    for old, new in source_edits:
        hits = [c for c in code if old in "".join(c["source"])]
        assert len(hits) == 1, f"{old!r} is in {len(hits)} cells of {name}"
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.chdir(NOTEBOOKS)  # where papermill and JupyterLab run it
        for cell in code:
            source = "".join(cell["source"])
            for old, new in source_edits:
                source = source.replace(old, new)
            if "parameters" in cell["metadata"].get("tags", []):
                source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in (parameters or {}).items())
            try:
                exec(compile(source, f"{name} cell", "exec"), namespace)
            except Exception as error:  # the cell a learner would see fail: the rest does not run
                return namespace, out.getvalue(), error
    return namespace, out.getvalue(), None


@pytest.fixture(scope="session")
def nb04(tmp_path_factory, tiny_dir):
    """Notebook 04 run once with its defaults (the whole tiny training), tracked in SwanLab's local mode.
    The adapter is in ``run.adapter``; notebook 05's tests start from it.

    Once per test run, not once per process: under pytest-xdist (``make test`` runs two workers) the first worker
    that needs it runs the notebook in the folder all workers share, holding a file lock, and the others wait
    for it and read the same executed copy, its status included."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        shared = shared.parent  # xdist gives each worker basetemp/popen-gwN; their parent is the run's own
    out_dir, status_file = shared / "nb04", shared / "nb04" / "status.txt"
    with FileLock(str(shared / "nb04.lock")):
        if status_file.is_file():  # another worker ran it
            run = Executed(status_file.read_text(encoding="utf-8"), out_dir / "04_lora_sft.ipynb")
        else:
            out_dir.mkdir(exist_ok=True)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SWANLAB_LOG_DIR", str(out_dir / "swanlog"))  # the kernel inherits the environment
                run = execute("04_lora_sft.ipynb", out_dir, RECIPE="tiny", OUTPUT_DIR=str(out_dir / "adapter"),
                              TRACKING="local", EXERCISE_STEPS=EXERCISE_STEPS)
            status_file.write_text(run.status, encoding="utf-8")
    assert run.status == "ok", run.status
    run.adapter, run.dir = out_dir / "adapter", out_dir
    return run


@pytest.fixture(scope="session")
def adapter(nb04):
    """The adapter of notebook 04's default run: the one trained adapter every later test loads (copy it to change it)."""
    return nb04.adapter


@pytest.fixture(scope="session")
def random_adapter(tmp_path_factory, tiny_dir):
    """A LoRA adapter of random (untrained) weights on the tiny model, saved as training saves one, profile.json
    included, in a second: for the tests of loading, refusing, merging and chatting mechanics, where what the adapter
    learned does not matter. Random B matrices (init_lora_weights=False) make it change the model's answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.families import GLM4
    from helpers.recipes import read_recipe

    out = tmp_path_factory.mktemp("random-adapter") / "adapter"
    recipe = read_recipe("tiny", output_dir=str(out))
    config = LoraConfig(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], target_modules=recipe["lora_target_modules"],
                        task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), config).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.chat_template = GLM4.training_template.read_text(encoding="utf-8")  # as training saves it
    tokenizer.save_pretrained(out)
    recipe.save(out)
    return out
