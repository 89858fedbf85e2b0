"""Alpaca rows -> chat messages -> ``input_ids`` + ``labels``: exactly what SFT trains on.

Taught in notebook 03; used by notebook 04, ``python -m helpers.train``, the tests and
benchmarks/prepare_data.py, so there is one implementation of these rules:

- the user turn is ``instruction``, then a blank line and ``input`` when there is one;
- GLM-4's chat template renders the conversation, and it is tokenized once, so the sequence starts
  with exactly one ``[gMASK]<sop>`` (rendering to text and tokenizing again would double it);
- the answer is followed by an end-of-turn token, ``<|user|>`` as in GLM-4's own fine-tuning,
  because the template never closes an assistant turn and a model never shown an end learns no end;
- labels are -100 on every prompt token; the answer and its end token are trained;
- an example longer than ``max_length`` is dropped and counted, never cut: a cut answer followed by
  the end token would teach the model to stop mid-sentence.

Whole batches are rendered and tokenized at once; the Rust tokenizer encodes a batch on all cores.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # label value the loss skips
END_OF_TURN = "<|user|>"


def user_content(instruction: str, input: str = "") -> str:
    """What the user says: the instruction, and the input after a blank line when there is one."""
    return f"{instruction}\n\n{input}" if input.strip() else instruction


def to_messages(row: dict, system: str | None = None) -> list[dict]:
    """One Alpaca row as a chat: [system], user, assistant."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_content(row["instruction"], row.get("input", ""))})
    if row.get("output") is not None:
        messages.append({"role": "assistant", "content": row["output"]})
    return messages


@dataclass
class PrepStats:
    rows: int
    kept: int
    dropped_too_long: int
    max_length: int

    def __str__(self):
        share = self.dropped_too_long / self.rows if self.rows else 0.0
        return (f"prepared {self.rows} rows: {self.kept} kept, {self.dropped_too_long} dropped "
                f"({share:.1%}) as longer than {self.max_length} tokens")


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts, no prefix added: the Rust tokenizer's batch call, on all cores."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    # The Rust tokenizer keeps the padding and truncation of the last padded call (a batched generate
    # leaves padding on): switch both off for this call, so no example is padded or cut, then restore.
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        if padding is not None:
            backend.enable_padding(**padding)
        if truncation is not None:
            backend.enable_truncation(**truncation)


def encode_batch(batch: dict, tokenizer, max_length: int, end_token: str = END_OF_TURN,
                 system: str | None = None) -> dict:
    """A batch of rows (column lists) -> ``input_ids``, ``labels`` and ``length``, over-long rows left out."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    if not rows:
        return {"input_ids": [], "labels": [], "length": []}
    chats = [to_messages(row, system) for row in rows]
    prompts = tokenizer.apply_chat_template([c[:-1] for c in chats], tokenize=False, add_generation_prompt=True)
    # GLM-4's template writes an assistant turn as "<|assistant|>" + "\n" + content; check that rule on the
    # first row against the template itself, then apply it to all (rendering each chat twice costs double)
    answers = ["\n" + row["output"] for row in rows]
    full = tokenizer.apply_chat_template(chats[0], tokenize=False)
    if full != prompts[0] + answers[0]:
        raise ValueError("this chat template does not write an assistant turn as GLM-4's does: use a GLM-4 tokenizer")
    # the text after <|assistant|> tokenizes alone exactly as within the whole: a special token splits both
    prompt_ids, answer_ids = _encode(tokenizer, prompts), _encode(tokenizer, answers)
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    out = {"input_ids": [], "labels": [], "length": []}
    for p, a in zip(prompt_ids, answer_ids):
        ids = p + a + [end_id]
        if len(ids) > max_length:
            continue
        out["input_ids"].append(ids)
        out["labels"].append([IGNORE_INDEX] * len(p) + a + [end_id])
        out["length"].append(len(ids))
    return out


def prepare(dataset, tokenizer, max_length: int, end_token: str = END_OF_TURN, system: str | None = None,
            batch_size: int = 4096, verbose: bool = True):
    """Alpaca rows (a ``datasets.Dataset`` or a list of dicts) -> (tokenized Dataset, PrepStats), order kept."""
    from datasets import Dataset

    rows = dataset if isinstance(dataset, list) else dataset.to_list()
    columns = {key: [row.get(key, "") for row in rows] for key in ("instruction", "input", "output")}
    out = {"input_ids": [], "labels": [], "length": []}
    for start in range(0, len(rows), batch_size):
        batch = {key: values[start:start + batch_size] for key, values in columns.items()}
        for key, values in encode_batch(batch, tokenizer, max_length, end_token, system).items():
            out[key].extend(values)
    prepared = Dataset.from_dict(out)
    stats = PrepStats(len(rows), len(prepared), len(rows) - len(prepared), max_length)
    if verbose:
        print(stats)
    return prepared, stats


def decode_labels(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """(text, trained) spans of one example: consecutive tokens grouped by whether the loss sees them."""
    spans: list[tuple[list[int], bool]] = []
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if spans and spans[-1][1] == trained:
            spans[-1][0].append(token)
        else:
            spans.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in spans]
