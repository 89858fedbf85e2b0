"""Before/after measures of a fine-tune: what it learned, and what it should not have, base against fine-tuned.

Taught in notebook 05, where these functions are written. The same model answers twice: with its
LoRA adapter switched off (``model.disable_adapter()``: the base model, so a 9B is never loaded
twice) and with it on.

On the held-out rows (written together with the training data):

- **eval loss**: mean cross-entropy per answer token (the end token included), the tokens training counts;
- **stop rate**: the share of greedy answers that end on one of GLM-4's end ids within ``max_new_tokens``;
- **identity share**: of the identity questions (new wordings), the share of answers giving the name 知微;
- the stop rate and identity share **at turns 2 and 3** of held-out conversations, the earlier turns as the data
  wrote them, and again with the model's own earlier answers.

On the evaluation sets written apart from the training data (data/eval/, data/README.md), the five measures the
README's table reports: the stop rate, the identity share (the name, or the lab when asked who made it), the
**leakage** (answers to other tasks that claim the identity anyway), and the identity share and stop rate at turn 2
when the earlier answers are the model's own.

    python -m helpers.evaluate --adapter outputs/lora-tiny               # prints the tables, writes nothing
    python -m helpers.evaluate --adapter outputs/lora-tiny --json m.json  # and every measure and answer as JSON
"""

import argparse
import contextlib
import json
from pathlib import Path

import torch
from datasets import disable_progress_bars
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers import CourseError, run_cli
from helpers.chat import load_adapter
from helpers.data import EVAL_DIR, load_alpaca, read_rows
from helpers.formatting import prepare_dataset, to_messages


# ---- #@save from notebooks/05_adapter_chat.ipynb: reply_batch, eval_loss, gives_identity, measure, measure_turns, claims_identity, share, measure_prompts, measure_own_turns, as_turns (make sync writes this block) ----
def reply_batch(model, tokenizer, conversations, max_new_tokens=256, batch_size=64):  #@save
    """`reply` for many conversations, `batch_size` at a time: the same greedy answers, several times faster.
    Prompts are padded on the left, so that every answer starts right after its own prompt."""
    end_ids = model.generation_config.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # remember the side; pad on the left for now
    answers = []
    try:
        for start in range(0, len(conversations), batch_size):
            inputs = tokenizer.apply_chat_template(conversations[start:start + batch_size], add_generation_prompt=True,
                                                   padding=True, return_tensors="pt", return_dict=True).to(model.device)
            room = model.config.max_position_embeddings - inputs["input_ids"].shape[1]  # after the longest prompt
            if room < 1:
                raise ValueError(f"a prompt among conversations {start + 1}-{start + batch_size} is longer than the "
                                 f"model's context of {model.config.max_position_embeddings} tokens: shorten it.")
            output = model.generate(**inputs, max_new_tokens=min(max_new_tokens, room), do_sample=False,
                                    eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)  # attention_mask: pads unseen
            for new in output[:, inputs["input_ids"].shape[1]:].tolist():
                # an answer that ended early is padded until the longest one ends: cut it at its first end id
                end = next((i for i, token in enumerate(new) if token in end_ids), None)
                answers.append((tokenizer.decode(new[:end], skip_special_tokens=True).strip(), end is not None))
    finally:
        tokenizer.padding_side = side
    return answers


def eval_loss(model, examples, pad_token_id, batch_size=8):  #@save
    """Mean cross-entropy per trained token (answer + end token) of prepared examples, as SFT counts it."""
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)  # TRL's: pads by position, labels with -100
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = examples.select(range(start, min(start + batch_size, len(examples))))
        batch = collate([{"input_ids": ids, "labels": [t if bit else -100 for t, bit in zip(ids, mask)]}  # as TRL builds
                         for ids, mask in zip(rows["input_ids"], rows["assistant_masks"])])  # them from the mask
        batch = {key: value.to(model.device) for key, value in batch.items()}
        with torch.no_grad():
            loss = model(**batch).loss  # the mean over this batch's trained tokens
        trained = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels: position 0 predicts nothing
        total, count = total + loss.item() * trained, count + trained  # a sum over tokens, not a mean of batch means
    return total / count


def gives_identity(text, asks="name"):  #@save
    """Whether an answer gives the trained identity: its name 知微 (ZhiWei), or, asked who made it, its lab 青禾 (Qinghe)."""
    words = ("知微", "zhiwei") if asks == "name" else ("青禾", "qinghe")
    return any(word in text.lower() for word in words)


def measure(model, tokenizer, rows, examples, max_new_tokens):  #@save
    """Eval loss, stop rate and identity share of `model` on held-out `rows` (`examples`: the same, prepared)."""
    questions = [to_messages(row)[:1] for row in rows]  # the user turn only: the model writes the answer
    replies = reply_batch(model, tokenizer, questions, max_new_tokens)
    answers = []
    for row, question, (answer, stopped) in zip(rows, questions, replies):
        kind = "identity" if gives_identity(row["output"]) else "general"  # its reference answer names 知微
        answers.append({"prompt": question[0]["content"], "kind": kind, "answer": answer, "stopped": stopped,
                        "identity": gives_identity(answer)})

    def share(key, kind=None):  # the share of answers (all, or of one kind) where `key` is true
        chosen = [a[key] for a in answers if kind is None or a["kind"] == kind]
        return round(sum(chosen) / len(chosen), 4) if chosen else None

    return {"eval_loss": round(eval_loss(model, examples, tokenizer.pad_token_id), 4), "stop_rate": share("stopped"),
            "stop_rate_general": share("stopped", "general"), "stop_rate_identity": share("stopped", "identity"),
            "identity_share": share("identity", "identity"), "answers": answers}


def measure_turns(model, tokenizer, conversations, max_new_tokens, turns=(2, 3)):  #@save
    """Stop rate and identity share at later turns of held-out conversations (lists of messages): the model answers
    the user's n-th turn, after the earlier turns as the data wrote them."""
    found = {}
    for n in turns:
        prompts, references = [], []
        for messages in conversations:
            users = [i for i, message in enumerate(messages) if message["role"] == "user"]
            if len(users) >= n:  # the conversation reaches turn n
                prompts.append(messages[:users[n - 1] + 1])  # everything up to the user's n-th turn
                references.append(messages[users[n - 1] + 1]["content"])  # the answer the data gives there
        replies = reply_batch(model, tokenizer, prompts, max_new_tokens)
        identity = [gives_identity(answer) for reference, (answer, _) in zip(references, replies) if gives_identity(reference)]
        found[f"turn {n}"] = {
            "questions": len(prompts), "stop_rate": round(sum(s for _, s in replies) / len(replies), 4) if replies else None,
            "identity_questions": len(identity), "identity_share": round(sum(identity) / len(identity), 4) if identity else None,
            "answers": [{"prompt": prompt[-1]["content"], "answer": answer, "stopped": stopped}
                        for prompt, (answer, stopped) in zip(prompts, replies)]}
    return found


def claims_identity(text):  #@save
    """Whether an answer claims the trained identity at all, by its name or its lab, whether or not it was asked."""
    return gives_identity(text, "name") or gives_identity(text, "maker")


def share(values):  #@save
    """The share of true values, or None when there are none: a stop rate, an identity share, a leakage."""
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def measure_prompts(model, tokenizer, identity, general, max_new_tokens):  #@save
    """On prompts written apart from the training data: the stop rate; the identity share of answers to questions
    about who the assistant is; the leakage, the share of answers to other tasks that claim the identity anyway."""
    prompts = [*identity, *general]
    replies = reply_batch(model, tokenizer, [[{"role": "user", "content": p["prompt"]}] for p in prompts], max_new_tokens)
    answers = [{"prompt": p["prompt"], "kind": p.get("kind") or "identity", "answer": answer, "stopped": stopped,
                "identity": gives_identity(answer, p.get("asks") or "name"), "claims": claims_identity(answer)}
               for p, (answer, stopped) in zip(prompts, replies)]
    asked, other = answers[:len(identity)], answers[len(identity):]
    return {"stop_rate": share(a["stopped"] for a in answers), "identity_share": share(a["identity"] for a in asked),
            "leakage": share(a["claims"] for a in other), "answers": answers}


def measure_own_turns(model, tokenizer, conversations, max_new_tokens):  #@save
    """Later turns with the model's own earlier answers: each conversation's user `turns` are answered one by one, every
    answer going into the next prompt. `identity_turn` is the turn that asks who the assistant is (`asks`: its name or
    maker), if any. Per turn: the stop rate, the identity share of identity questions, the leakage on the others."""
    histories = [[{"role": "system", "content": c["system"]}] if c.get("system") else [] for c in conversations]
    found = {}
    for n in range(1, max(len(c["turns"]) for c in conversations) + 1):
        active = [i for i, c in enumerate(conversations) if len(c["turns"]) >= n]
        for i in active:
            histories[i].append({"role": "user", "content": conversations[i]["turns"][n - 1]})
        rows = []
        for i, (answer, stopped) in zip(active, reply_batch(model, tokenizer, [histories[i] for i in active], max_new_tokens)):
            histories[i].append({"role": "assistant", "content": answer})  # its own answer goes on, whatever it was
            asked = conversations[i].get("identity_turn") == n
            rows.append({"prompt": histories[i][-2]["content"], "asked": asked, "answer": answer, "stopped": stopped,
                         "identity": gives_identity(answer, conversations[i].get("asks") or "name"),
                         "claims": claims_identity(answer)})
        found[f"turn {n}"] = {"questions": len(rows), "stop_rate": share(r["stopped"] for r in rows),
                              "identity_questions": sum(r["asked"] for r in rows),
                              "identity_share": share(r["identity"] for r in rows if r["asked"]),
                              "leakage": share(r["claims"] for r in rows if not r["asked"]), "answers": rows}
    return found


def as_turns(messages):  #@save
    """A conversation of the data as `measure_own_turns` takes it: its system message, its user turns, and the turn
    whose answer in the data names the identity."""
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return {"system": messages[0]["content"] if messages[0]["role"] == "system" else None,
            "turns": [m["content"] for m in messages if m["role"] == "user"],
            "identity_turn": next((n for n, answer in enumerate(answers, 1) if gives_identity(answer)), None)}
# ---- end of #@save ----


FIVE = ("stop rate", "identity", "leakage", "turn-2 identity", "turn-2 stop")  # the README's table


def load_eval_sets(directory=EVAL_DIR) -> dict[str, list[dict]]:
    """The evaluation sets written apart from the training data: identity questions (``prompt``, ``asks``: name or
    maker), general tasks (``prompt``, ``kind``), and conversations of user ``turns`` with the ``identity_turn``."""
    return {name: read_rows(directory / f"{name}_zh.jsonl") for name in ("identity", "general", "conversations")}


def independent_measures(model, tokenizer, max_new_tokens, limit=None) -> dict:
    """The measures on data/eval/, for the model as it is (call it inside ``disable_adapter()`` for the base)."""
    sets = load_eval_sets()
    prompts = measure_prompts(model, tokenizer, sets["identity"][:limit], sets["general"][:limit], max_new_tokens)
    turns = measure_own_turns(model, tokenizer, sets["conversations"][:limit], max_new_tokens)
    five = dict(zip(FIVE, (prompts["stop_rate"], prompts["identity_share"], prompts["leakage"],
                           turns["turn 2"]["identity_share"], turns["turn 2"]["stop_rate"])))
    return {**five, "prompts": prompts, "turns": turns}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a LoRA adapter directory from helpers.train or notebook 04")
    parser.add_argument("--data", default="sample", help="the data whose test split is measured (default: sample)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the adapter recipe's")
    parser.add_argument("--json", help="also write every measure and answer to this JSON file")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="measure only the first N rows of each set: a quick check (default: all of them)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: give 1 or more rows, or leave it out to measure every row")
    disable_progress_bars()  # of the data preparation: one line says what it did
    model, tokenizer, recipe = load_adapter(args.adapter)
    max_new_tokens = args.max_new_tokens or recipe["max_new_tokens"]
    heldout = load_alpaca(args.data, split="test")
    talks = [to_messages(row) for row in heldout if row.get("messages")][:args.limit]  # measured at turns 2 and 3
    rows = heldout.filter(lambda row: not row.get("messages"))  # single questions
    rows = rows.take(args.limit) if args.limit else rows
    examples = prepare_dataset(rows, tokenizer, recipe["max_length"])
    if not len(examples):
        raise CourseError(f"no held-out row of {args.data} fits in {recipe['max_length']} tokens: measure other data.")
    found = {}
    try:
        for name, switch in (("base", model.disable_adapter), ("fine-tuned", contextlib.nullcontext)):
            with switch():
                own_turns = measure_own_turns(model, tokenizer, [as_turns(t) for t in talks], max_new_tokens) if talks else {}
                found[name] = {"heldout": measure(model, tokenizer, rows, examples, max_new_tokens),
                               "turns": measure_turns(model, tokenizer, talks, max_new_tokens), "own turns": own_turns,
                               "independent": independent_measures(model, tokenizer, max_new_tokens, args.limit)}
    except ValueError as err:  # a question longer than the model's context
        raise CourseError(f"{args.data}: {err}") from None
    base, tuned = found["base"], found["fine-tuned"]

    def pct(share):  # None: no question of that kind among the rows measured (with --limit, say)
        return "-" if share is None else f"{share:.0%}"

    print(f"{'held-out rows':<16}{'eval loss':>10}{'stop rate':>11}{'identity':>10}   ({len(rows)} rows, "
          f"{max_new_tokens} new tokens at most)")
    for name, m in found.items():
        print(f"{name:<16}{m['heldout']['eval_loss']:>10.3f}{m['heldout']['stop_rate']:>11.0%}"
              f"{pct(m['heldout']['identity_share']):>10}")
    for turn in (turn for turn in tuned["turns"] if tuned["turns"][turn]["questions"]):  # later in a conversation
        b, t, own = base["turns"][turn], tuned["turns"][turn], tuned["own turns"][turn]
        print(f"{turn} of {len(talks)} conversations: stop rate {b['stop_rate']:.0%} -> {t['stop_rate']:.0%}, identity "
              f"{pct(b['identity_share'])} -> {pct(t['identity_share'])} ({t['identity_questions']} identity "
              f"questions); with its own earlier answers: stop rate {own['stop_rate']:.0%}, identity "
              f"{pct(own['identity_share'])}")
    print(f"{'written apart':<16}" + "".join(f"{k:>17}" for k in FIVE) + "   (data/eval/)")
    for name, m in found.items():
        print(f"{name:<16}" + "".join(f"{pct(m['independent'][k]):>17}" for k in FIVE))
    if args.json:
        Path(args.json).write_text(json.dumps(found, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    run_cli(main)
