"""Download GLM-4-9B base and chat weights into weights/, from the Hugging Face hub or ModelScope.

Taught in notebook 00. Honours ``HF_ENDPOINT`` (a mirror such as https://hf-mirror.com) and fails
within seconds, in one sentence, when the source cannot be reached. An interrupted download
resumes when the same command runs again. A tokenizer downloaded without a chat template gets
GLM-4-9B-chat's own, so base and chat model render conversations the same way.

    python -m helpers.download glm4-9b                      # base + chat, about 19 GB each
    python -m helpers.download glm4-9b --source modelscope  # the same from ModelScope
    python -m helpers.download glm4-9b --only base
"""

from __future__ import annotations

import argparse
import os
import shutil
import urllib.error
import urllib.request

from helpers import CourseError, resolve, run_cli
from helpers.families import FAMILIES, has_chat_template

PROBE_TIMEOUT = 5.0  # seconds to wait for the source to answer before giving up


def hub_reachable(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether an HTTP(S) endpoint answers within ``timeout`` seconds (any HTTP status counts)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True, "reachable"
    except urllib.error.HTTPError as err:  # it answered, even if with an error page
        return True, f"reachable (HTTP {err.code})"
    except Exception as err:  # DNS failure, refused, timed out, proxy errors
        reason = getattr(err, "reason", err)
        return False, f"not reachable ({type(reason).__name__})"


def source_url(source: str) -> str:
    if source == "hf":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return "https://www.modelscope.cn"


def check_source(source: str) -> None:
    """Raise a one-sentence CourseError unless the source can be reached now."""
    if source == "hf" and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise CourseError("HF_HUB_OFFLINE=1 is set, so nothing can be downloaded: unset it, "
                          "or use --source modelscope.")
    url = source_url(source)
    ok, detail = hub_reachable(url, PROBE_TIMEOUT)
    if not ok:
        hint = ("set HF_ENDPOINT to a mirror (for example https://hf-mirror.com) or use --source modelscope"
                if source == "hf" else "use --source hf, with HF_ENDPOINT for a mirror")
        why = detail.removeprefix("not reachable ").strip("()")
        raise CourseError(f"{url} cannot be reached ({why}, waited at most {PROBE_TIMEOUT:.0f} s): "
                          f"check the network, {hint}, or copy the weights into weights/ by hand.")


def models(name: str) -> dict:
    """The downloadable models of a family, by part: {"base" | "chat": (directory, Hugging Face id, ModelScope id, GB,
    the family's chat template)},
    from its entry in helpers/families.py (the base first, then the chat model)."""
    found = [f for f in FAMILIES.values() if f.download_name == name]
    if not found:
        raise CourseError(f"nothing to download for {name!r}: choose "
                          f"{', '.join(f.download_name for f in FAMILIES.values() if f.download_name)} "
                          "(the tiny model is built locally with `make tiny`).")
    template = found[0].chat_template
    return {part: (resolve(path), *ids, template) for part, (path, ids) in zip(("base", "chat"), found[0].downloads.items())}


def download(name: str = "glm4-9b", source: str = "hf", only: str | None = None) -> list:
    """Fetch a family's released models into weights/ (``only``: "base" or "chat"); returns their directories."""
    found = models(name)
    parts = {k: v[1:4] for k, v in found.items() if only in (None, k)}
    dirs, template = {k: v[0] for k, v in found.items()}, found["base"][4]
    todo = {k: v for k, v in parts.items() if not (dirs[k] / "config.json").is_file()
            or not any(dirs[k].glob("*.safetensors"))}
    for part in set(parts) - set(todo):
        print(f"{dirs[part]} is already here")
        add_chat_template(dirs[part], template)
    if not todo:
        return [dirs[k] for k in parts]

    need = sum(v[2] for v in todo.values())
    weights = resolve("weights")
    weights.mkdir(exist_ok=True)
    free = shutil.disk_usage(weights).free / 1024**3
    if free < need:
        raise CourseError(f"{weights} has {free:.0f} GB free but the download needs about {need:.0f} GB: "
                          "free some space, or download one part with --only base.")
    check_source(source)
    for part, (hf_id, ms_id, size) in todo.items():
        target = dirs[part]
        print(f"downloading {hf_id if source == 'hf' else ms_id} ({size:.0f} GB) from "
              f"{source_url(source)} to {target}")
        try:
            if source == "hf":
                from huggingface_hub import snapshot_download

                snapshot_download(hf_id, local_dir=target)
            else:
                from modelscope import snapshot_download

                snapshot_download(ms_id, local_dir=str(target))
        except KeyboardInterrupt:
            raise
        except Exception as err:
            raise CourseError(f"downloading {target.name} stopped ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]}): run the same command again to resume.") from None
        add_chat_template(target, template)
    return [dirs[k] for k in parts]


def add_chat_template(model_dir, template) -> bool:
    """Give a model directory whose tokenizer has no chat template GLM-4-9B-chat's own, so base and chat
    models render conversations the same way; returns whether one was added."""
    if has_chat_template(model_dir):
        return False
    shutil.copyfile(template, model_dir / "chat_template.jinja")
    print(f"added GLM-4's chat template to {model_dir}")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.download", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(f.download_name for f in FAMILIES.values() if f.download_name))
    parser.add_argument("--source", choices=("hf", "modelscope"), default="hf")
    parser.add_argument("--only", choices=("base", "chat"), help="download just one of the two models")
    args = parser.parse_args(argv)
    download(args.name, args.source, args.only)
    return 0


if __name__ == "__main__":
    run_cli(main)
