"""Run every notebook in order, headless, and report how each went (``make tutorial``).

Executed copies go to runs/; the source notebooks are never modified. A failed notebook stops
the series (later ones build on it), and the table says which one and where its copy is.

    python -m helpers.tutorial                    # all notebooks, profile chosen by the machine
    python -m helpers.tutorial --profile tiny --only 00 01
"""

from __future__ import annotations

import argparse
import time

from helpers import REPO_ROOT, CourseError, resolve, run_cli


def notebooks(only: list[str] | None = None) -> list:
    found = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [nb for nb in found if nb.name[:2] in only]
    if not found:
        raise CourseError("no notebooks matched: check --only (two-digit numbers such as 00 03).")
    return found


def run_notebook(path, out_dir, parameters: dict, timeout: int = 3600) -> tuple[str, float, object]:
    """Execute one notebook in a fresh kernel in notebooks/; returns (status, seconds, executed copy)."""
    import papermill as pm

    out = resolve(out_dir) / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(path))
    params = {k: v for k, v in parameters.items() if k in declared}
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout)
        status = "ok"
    except pm.PapermillExecutionError as err:
        status = f"failed: {err.ename}: {str(err.evalue).splitlines()[0][:120] if err.evalue else ''}"
    return status, time.perf_counter() - start, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tutorial", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="auto", help="auto, tiny or glm4-9b (default auto)")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, such as 00 03")
    parser.add_argument("--out", default="runs", help="where executed copies go (default runs/)")
    args = parser.parse_args(argv)

    rows, failed = [], False
    for nb in notebooks(args.only):
        if failed:
            rows.append((nb.name, "skipped: an earlier notebook failed", 0.0, "-"))
            continue
        print(f"running {nb.name} ...", flush=True)
        status, seconds, out = run_notebook(nb, args.out, {"PROFILE": args.profile})
        failed = status != "ok"
        rows.append((nb.name, status, seconds, str(out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out)))

    header = ("notebook", "status", "seconds", "executed copy")
    widths = [max(len(str(r[i])) if i != 2 else 7 for r in rows + [header]) for i in range(4)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for name, status, seconds, out in rows:
        print("  ".join([name.ljust(widths[0]), status.ljust(widths[1]), f"{seconds:7.1f}", out]))
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
