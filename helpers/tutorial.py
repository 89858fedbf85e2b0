"""Run every notebook in order, headless, and report how each went (``make tutorial``).

Executed copies go to runs/ (runs/RECIPE/ with --all-recipes), with the adapter notebook 04 trains
in runs/.../adapter, replaced on every run, so the command can run again and again; the source
notebooks are never modified. A failed notebook stops the series (later ones build on it), and the
table says which one and where its copy is. A progress bar shows the cell a notebook has reached.

    python -m helpers.tutorial                    # all notebooks, the recipe chosen by the machine
    python -m helpers.tutorial --recipe tiny --only 00 01
    python -m helpers.tutorial --all-recipes      # every recipe this machine can run: check a classroom machine
"""

from __future__ import annotations

import argparse
import shutil
import time

from helpers import REPO_ROOT, CourseError, resolve, run_cli, shown


def notebooks(only: list[str] | None = None) -> list:
    found = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [nb for nb in found if nb.name[:2] in only]
    if not found:
        raise CourseError("no notebooks matched: check --only (two-digit numbers such as 00 03).")
    return found


def run_notebook(path, out_dir, parameters: dict, timeout: int = 3600, progress: bool = False) -> tuple[str, float, object]:
    """Execute one notebook in a fresh kernel in its folder; returns (status, seconds, executed copy).

    The kernel runs without the libraries' tqdm bars (datasets' `Map`, transformers' `Loading weights`): a saved
    copy would keep each at the first frame it drew, 0%. The trainer's own progress table stays. The copy names
    paths from the repository's root, as `shown` does (``name_paths_from_the_repository``)."""
    import os

    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    out = resolve(out_dir) / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(path))
    params = {k: v for k, v in parameters.items() if k in declared}
    for quiet in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):  # the kernel inherits these
        os.environ.setdefault(quiet, "1")
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent), kernel_name="python3",
                            progress_bar=progress, execution_timeout=timeout,  # the bar: cell n of N, time taken
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # not its "TCP without encryption"
        status = "ok"
    except pm.PapermillExecutionError as err:
        status = f"failed: {err.ename}: {str(err.evalue).splitlines()[0][:120] if err.evalue else ''}"
    except DeadKernelError:  # usually the system killed it for memory: the series stops here, said in one line
        status = "failed: the kernel died, most often out of memory: close other notebooks, or use a smaller recipe"
    seconds = time.perf_counter() - start
    if out.is_file():
        name_paths_from_the_repository(out)
    return status, seconds, out


def name_paths_from_the_repository(copy) -> None:
    """Rewrite an executed copy's outputs and papermill's record of where it ran so that paths inside the repository
    read as `shown` writes them (``runs/adapter``, not ``/home/you/course/runs/adapter``): the copy can be handed out
    or compared across machines. Only whole path prefixes are replaced; the cells' sources are left as they are."""
    import json
    import re

    inside = re.compile(re.escape(str(REPO_ROOT)) + r"(?:[/\\\\]|(?![\w.-]))")  # the root, then a separator or the end

    def relative(value):
        if isinstance(value, str):
            return inside.sub(lambda m: "" if len(m.group()) > len(str(REPO_ROOT)) else ".", value)
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        return value

    nb = json.loads(copy.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if "outputs" in cell:
            cell["outputs"] = relative(cell["outputs"])
    nb["metadata"]["papermill"] = relative(nb["metadata"].get("papermill", {}))
    copy.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def free_port() -> int:
    """A TCP port nothing listens on now (the system picks it), for notebook 06's server."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runnable_recipes() -> list[str]:
    """The recipes this machine can run now (``helpers.machine.fits``) whose weights are here: tiny, and each GPU
    recipe that passes the same checks notebook 04 runs first."""
    from helpers.checks import preflight
    from helpers.recipes import read_recipe, recipe_names

    names = []
    for name in sorted(recipe_names(), key=lambda name: name != "tiny"):  # tiny first: it runs anywhere
        try:
            preflight(read_recipe(name))
            names.append(name)
        except CourseError as err:
            print(f"not running {name}: {err}")
    return names


# what a headless run of notebook 05 types into its chat box (in JupyterLab, a person types instead)
CHAT_SCRIPT = ["你好，你叫什么名字？", "你是哪个实验室训练的？", "/reset", "你能帮我做些什么？"]


def series_parameters(recipe: str, out) -> dict:
    """What papermill writes into each notebook of a series. Paths are from the repository root, as the notebooks
    take them, so the copies handed to students name no machine's folders (the merged model goes beside the adapter,
    the notebooks' default); 06's server gets a free port."""
    adapter = shown(resolve(out) / "adapter")
    return {"RECIPE": recipe, "OUTPUT_DIR": adapter, "ADAPTER_DIR": adapter, "PORT": free_port(),
            "CHAT_SCRIPT": CHAT_SCRIPT}


def run_series(recipe: str, out, only=None) -> tuple[list, bool]:
    """Every notebook for one recipe, the adapter in out/adapter; returns the table's rows and whether all ran."""
    out, chosen = resolve(out), notebooks(only)  # an unknown --only is refused before anything is removed
    for own in ("adapter", "adapter-merged", "adapter-merged-one-end-id", "serve-logs"):  # this runner's own results: replaced, so the series can run again
        shutil.rmtree(out / own, ignore_errors=True)
    parameters = series_parameters(recipe, out)
    rows, failed = [], False
    for nb in chosen:
        if failed:
            rows.append((nb.name, "skipped: an earlier notebook failed", 0.0, "-"))
            continue
        print(f"running {nb.name} ({recipe}) ...", flush=True)
        status, seconds, executed = run_notebook(nb, out, parameters, progress=True)
        failed = status != "ok"
        rows.append((nb.name, status, seconds, shown(executed)))
    return rows, not failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tutorial", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="auto", help="auto, or a recipe in configs/: tiny, glm4-9b, glm4-9b-qlora")
    parser.add_argument("--all-recipes", action="store_true", help="run the series for every recipe this machine can")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, such as 00 03")
    parser.add_argument("--out", default="runs", help="where executed copies go (default runs/)")
    args = parser.parse_args(argv)

    series = {name: f"{args.out}/{name}" for name in runnable_recipes()} if args.all_recipes else {args.recipe: args.out}
    rows, ok = [], True
    for recipe, out in series.items():
        done, passed = run_series(recipe, out, args.only)
        rows += done
        ok &= passed
    header = ("notebook", "status", "seconds", "executed copy")
    widths = [max(len(str(r[i])) if i != 2 else 7 for r in rows + [header]) for i in range(4)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for name, status, seconds, out in rows:
        print("  ".join([name.ljust(widths[0]), status.ljust(widths[1]), f"{seconds:7.1f}", out]))
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
