"""Instruction data: load the sample or the full set, check every row, say what is wrong.

Taught in notebook 03. A row is an Alpaca row (``instruction``, ``input``, ``output``) or a
conversation in GLM-4's ``messages`` format, as GLM-4's own fine-tuning demo writes it (data/README.md);
a file may hold both. One loader for every source. The course's identity rows (data/identity_zh.json, what
notebook 05 measures) are a file of their own, which notebook 04 and the training command join to the sample
(``concatenate_datasets``), and to a learner's own data only when asked:

    load_alpaca("sample")                       # the sample's rows and conversations
    load_alpaca("sample", split="test")         # the fixed held-out rows and conversations
    load_alpaca("data/alpaca_gpt4_data_zh.json") # a local .json (list) or .jsonl file
    load_alpaca("llamafactory/alpaca_gpt4_zh")  # the full 42,677 rows from the Hugging Face hub
    load_alpaca("modelscope:llamafactory/alpaca_gpt4_zh")  # the same from ModelScope

    python -m helpers.data FILE [FILE ...]      # row count, field statistics, every problem
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from helpers import REPO_ROOT, CourseError, resolve, run_cli
from helpers.families import GLM4

FIELDS = ("instruction", "input", "output")
FULL_DATA_ID = "llamafactory/alpaca_gpt4_zh"  # 42,677 rows; the same id on ModelScope
SAMPLE = {"train": ("data/alpaca_zh_sample.json", "data/conversations_zh.jsonl", "data/general_en_zh.json"),
          "test": ("data/heldout_zh.json", "data/heldout_conversations_zh.jsonl")}
IDENTITY = REPO_ROOT / "data/identity_zh.json"  # who the assistant is: asked in new wordings by the held-out rows
EVAL_DIR = REPO_ROOT / "data/eval"  # written apart from the training data, before any result was seen (data/README.md)


class DataError(CourseError):
    """A data file or row the course cannot use."""


def read_rows(path) -> list:
    """The rows of a local .json (a list of objects) or .jsonl (one object a line) file."""
    path = resolve(path)
    shown = path.name if path.parent == resolve("data") else str(path)
    if not path.is_file():
        raise DataError(f"{shown} not found: check the path, or use 'sample' for the data in data/.")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{shown} line {n} is not valid JSON ({err.msg}): fix that line.") from None
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{shown} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): "
            "fix the file there, or save it again as a JSON list of rows."
        ) from None
    if isinstance(rows, dict) and isinstance(rows.get("train"), list):
        rows = rows["train"]
    if not isinstance(rows, list):
        raise DataError(f"{shown} holds a JSON {type(rows).__name__}, not a list of rows: "
                        "write it as [{\"instruction\": ..., \"input\": ..., \"output\": ...}, ...].")
    return rows


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeio' else 'a'} {kind}"


def conversation_problem(messages) -> str | None:
    """What is wrong with one conversation (a ``messages`` list), with the fix, or None when it is usable."""
    if not isinstance(messages, list) or not messages:
        return "has no messages: write \"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]"
    previous = None
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {n} is {_a('JSON ' + type(message).__name__)}, not an object: write it as {{\"role\": ..., \"content\": ...}}"
        role, content = message.get("role"), message.get("content")
        where = f"message {n} ({role})"
        if role not in GLM4.roles:
            return f"message {n} has the role {role!r}: use system, user, assistant or observation"
        if not isinstance(content, str):
            return f"{where}: 'content' is {_a(type(content).__name__)}, not a string: write it in quotes"
        if not isinstance(message.get("metadata", ""), str):
            return f"{where}: 'metadata' (a tool call's name) must be a string"
        if "tools" in message and (role != "system" or not isinstance(message["tools"], list)):
            return f"{where} has 'tools': only the system message may have them, as a list"
        if role == "system" and n > 1:
            return f"{where}: only the first message may be a system message: move it to the start"
        if not content.strip() and not message.get("tools"):
            return f"{where} is empty: write its content, or remove the message"
        if role == "assistant" and previous == "assistant":
            return f"messages {n - 1} and {n} are two assistant turns in a row: join them, or put a user turn between"
        if role == "assistant" and previous in (None, "system"):
            return f"{where} answers before any user turn: start the conversation with the user's"
        if role == "observation" and previous != "assistant":
            return f"{where} does not follow an assistant's tool call: put the call (an assistant turn) before it"
        previous = role
    if previous != "assistant" or messages[-1].get("metadata"):
        return (f"ends with {'a tool call' if previous == 'assistant' else _a(previous) + ' turn'}: "
                "end it with the assistant's answer, which is what is trained")
    return None


def row_problem(row) -> str | None:
    """What is wrong with one row (Alpaca or a conversation), with the fix, or None when it is usable."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not an object: write it as {{\"instruction\": ..., \"output\": ...}}"
    if "messages" in row:
        return conversation_problem(row["messages"])
    for field in FIELDS:
        if field not in row:
            if field == "input":
                continue  # Alpaca allows it to be left out: it means ""
            return f"has no '{field}' field (nor 'messages'): add it as a string"
        value = row[field]
        if not isinstance(value, str):
            return (f"'{field}' is {_a(type(value).__name__)}, not a string: "
                    "write it in quotes (use \"\" for an empty input)")
        if field != "input" and not value.strip():
            return f"'{field}' is empty: write it, or remove the row"
    return None


def check_rows(rows: list, source: str) -> list[str]:
    """One line per unusable row: where it is, what is wrong, the fix. Rows count from 1."""
    return [f"{source} row {n}: {p}" for n, row in enumerate(rows, 1) if (p := row_problem(row))]


def as_row(row: dict) -> dict:
    """A usable row in the one shape a ``Dataset`` holds: the Alpaca fields, and for a conversation its
    messages (role, content, metadata) and its tools as JSON text (tools differ in shape, a column may not)."""
    if "messages" not in row:
        return {f: row.get(f, "") for f in FIELDS}
    messages = [{"role": m["role"], "content": m["content"], "metadata": m.get("metadata")} for m in row["messages"]]
    tools = row["messages"][0].get("tools")
    return {**dict.fromkeys(FIELDS, ""), "messages": messages,
            "tools": json.dumps(tools, ensure_ascii=False) if tools else ""}


def clean_rows(rows: list, source: str, drop_bad: bool = False) -> list[dict]:
    """Rows as ``as_row`` gives them; bad rows stop the run, or are dropped and counted."""
    problems = check_rows(rows, source)
    if problems:
        if not drop_bad:
            more = f" (and {len(problems) - 1} more; `python -m helpers.data` lists them all)" if len(problems) > 1 else ""
            raise DataError(f"{problems[0]}{more}.")
        print(f"dropped {len(problems)} of {len(rows)} rows from {source} that cannot be used (first: {problems[0]})")
    return [as_row(row) for row in rows if row_problem(row) is None]


def in_test_split(row: dict, test_fraction: float) -> bool:
    """A stable split: a row's side depends only on its text (the question, or a conversation's
    non-assistant turns), never on order or a seed."""
    talk = row.get("messages")
    text = [m["content"] for m in talk if m["role"] != "assistant"] if talk else [row["instruction"], row["input"]]
    key = "\x00".join(text).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 < test_fraction


def load_alpaca(source: str = "sample", split: str = "train", test_fraction: float = 0.02, drop_bad: bool = False):
    """A ``datasets.Dataset`` of checked Alpaca rows from any source (see the module docstring).

    ``split`` is "train", "test" or "all". The sample has a fixed file for each; any other source
    is split by ``in_test_split``, so the held-out rows stay the same however the file is ordered.
    """
    from datasets import Dataset

    source = str(source)  # a path too
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}: use 'train', 'test' or 'all'.")
    if source == "sample":
        names = [*SAMPLE["train"], *SAMPLE["test"]] if split == "all" else SAMPLE[split]
        rows = [r for name in names for r in clean_rows(read_rows(name), Path(name).name, drop_bad)]
    else:
        if source.startswith("modelscope:"):
            rows = _from_modelscope(source.removeprefix("modelscope:"))
        elif resolve(source).suffix in (".json", ".jsonl") or resolve(source).exists():
            rows = read_rows(source)
        else:
            rows = _from_hub(source)
        rows = clean_rows(rows, source, drop_bad)
        if split != "all":
            rows = [r for r in rows if in_test_split(r, test_fraction) == (split == "test")]
    if any("messages" in row for row in rows):  # conversations among the rows: every row gets their columns
        rows = [{"messages": [], "tools": "", **row} for row in rows]
    return Dataset.from_list(rows)


def _from_hub(repo_id: str) -> list:
    import datasets

    try:
        return datasets.load_dataset(repo_id, split="train").to_list()
    except Exception as err:
        raise DataError(f"could not load {repo_id} from the Hugging Face hub ({type(err).__name__}): "
                        "check the network or HF_ENDPOINT (unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), use "
                        f"'modelscope:{FULL_DATA_ID}', or pass a local JSON file (data/README.md).") from None


def _from_modelscope(dataset_id: str) -> list:
    try:
        from modelscope.msdatasets import MsDataset

        return list(MsDataset.load(dataset_id, split="train"))
    except Exception as err:
        raise DataError(f"could not load {dataset_id} from ModelScope ({type(err).__name__}): check the network, "
                        "or pass a local JSON file (data/README.md).") from None


def summarize(rows: list[dict]) -> dict:
    """Row count, how many have an input, characters per Alpaca field (min / mean / max), and conversations."""
    turns = [sum(m["role"] == "assistant" for m in r["messages"]) for r in rows if r.get("messages")]
    rows = [r for r in rows if not r.get("messages")]
    stats = {"rows": len(rows), "with_input": sum(1 for r in rows if r["input"].strip()),
             "conversations": len(turns), "assistant_turns": sum(turns), "most_turns": max(turns, default=0)}
    for field in FIELDS:
        lengths = [len(r[field]) for r in rows] or [0]
        stats[field] = {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)}
    return stats


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise DataError("name a data file to check: python -m helpers.data data/alpaca_zh_sample.json")
    bad = 0
    for path in paths:
        try:
            rows = read_rows(path)
        except DataError as err:
            print(f"{path}: {err}")
            bad += 1
            continue
        problems = check_rows(rows, path)
        good = [as_row(r) for r in rows if row_problem(r) is None]
        stats = summarize(good)
        print(f"{path}: {len(rows)} rows, {len(good)} usable, {stats['with_input']} with an input"
              + (f", {stats['conversations']} conversations" if stats["conversations"] else ""))
        if stats["rows"]:
            for field in FIELDS:
                s = stats[field]
                print(f"  {field:<12} characters  min {s['min']:>5}  mean {s['mean']:>7}  max {s['max']:>6}")
        if stats["conversations"]:
            print(f"  conversations: {stats['assistant_turns']} assistant turns, {stats['most_turns']} at most in one")
        print(f"  {len(problems)} problem(s)" + (":" if problems else ""))
        for p in problems:
            print(f"  {p}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    run_cli(main)
