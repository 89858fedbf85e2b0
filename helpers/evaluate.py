"""Before/after measures of a fine-tune on held-out rows: eval loss, stop rate, identity share.

Taught in notebook 05, where these functions are written. The same model answers twice: with its
LoRA adapter switched off (``model.disable_adapter()``: the base model, so a 9B is never loaded
twice) and with it on.

- **eval loss**: mean cross-entropy per answer token (the end token included) on the held-out rows,
  the same tokens the training loss counts;
- **stop rate**: the share of greedy answers that end on one of GLM-4's end ids within
  ``max_new_tokens``, rather than running on until cut off;
- **identity share**: of the held-out identity questions (new wordings, never trained on), the share
  of answers that give the trained name, 知微 (or its spelling ZhiWei);
- the stop rate and identity share **at turns 2 and 3** of held-out conversations, the earlier turns
  given as the data wrote them.

    python -m helpers.evaluate --adapter outputs/lora-tiny     # prints the table, writes nothing
"""

import argparse

import torch
from datasets import disable_progress_bars
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers import CourseError, run_cli
from helpers.chat import load_adapter
from helpers.data import load_alpaca
from helpers.formatting import prepare_dataset, to_messages


def reply_batch(model, tokenizer, conversations, max_new_tokens=256, batch_size=16):  #@save
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
        batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
        batch = {key: value.to(model.device) for key, value in batch.items()}
        with torch.no_grad():
            loss = model(**batch).loss  # the mean over this batch's trained tokens
        trained = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels: position 0 predicts nothing
        total, count = total + loss.item() * trained, count + trained  # a sum over tokens, not a mean of batch means
    return total / count


def gives_identity(text):  #@save
    """Whether a text names the trained identity: 知微, or its spelling ZhiWei."""
    return "知微" in text or "ZhiWei" in text


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a LoRA adapter directory from helpers.train or notebook 04")
    parser.add_argument("--data", default="sample", help="the data whose test split is measured (default: sample)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the adapter profile's")
    args = parser.parse_args(argv)
    disable_progress_bars()  # of the data preparation: one line says what it did
    model, tokenizer, profile = load_adapter(args.adapter)
    max_new_tokens = args.max_new_tokens or profile.max_new_tokens
    heldout = load_alpaca(args.data, split="test")
    talks = [to_messages(row) for row in heldout if row.get("messages")]  # conversations, measured at turns 2 and 3
    rows = heldout.filter(lambda row: not row.get("messages"))  # single questions
    examples = prepare_dataset(rows, tokenizer, profile.max_length)
    if not len(examples):
        raise CourseError(f"no held-out row of {args.data} fits in {profile.max_length} tokens: measure other data.")
    try:
        with model.disable_adapter():
            base = measure(model, tokenizer, rows, examples, max_new_tokens)
            base_turns = measure_turns(model, tokenizer, talks, max_new_tokens)
        tuned = measure(model, tokenizer, rows, examples, max_new_tokens)
        tuned_turns = measure_turns(model, tokenizer, talks, max_new_tokens)
    except ValueError as err:  # a question longer than the model's context
        raise CourseError(f"{args.data}: {err}") from None
    print(f"{'':<12}{'eval loss':>10}{'stop rate':>11}{'identity':>10}   ({len(rows)} rows, "
          f"{max_new_tokens} new tokens at most)")
    for name, m in (("base", base), ("fine-tuned", tuned)):
        print(f"{name:<12}{m['eval_loss']:>10.3f}{m['stop_rate']:>11.0%}{m['identity_share'] or 0:>10.0%}")
    for turn in (turn for turn in tuned_turns if tuned_turns[turn]["questions"]):  # later in a conversation
        print(f"{turn} of {len(talks)} conversations: stop rate {base_turns[turn]['stop_rate']:.0%} -> "
              f"{tuned_turns[turn]['stop_rate']:.0%}, identity {base_turns[turn]['identity_share'] or 0:.0%} -> "
              f"{tuned_turns[turn]['identity_share'] or 0:.0%} ({tuned_turns[turn]['identity_questions']} identity questions)")
    return 0


if __name__ == "__main__":
    run_cli(main)
