"""Alpaca rows -> chat messages -> ``input_ids`` + ``labels``: exactly what SFT trains on.

Taught in notebook 03, where these functions are written; notebooks 04 and 05 and the command
lines use them, so there is one implementation of the rules:

- the user turn is ``instruction``, then a blank line and ``input`` when there is one;
- the conversation is tokenized once by the chat template, so it starts with exactly one
  ``[gMASK]<sop>`` (rendering to text and tokenizing again would double it);
- the answer is followed by ``<|user|>``, as in GLM-4's own fine-tuning, because the template never
  closes an assistant turn and a model never shown an end learns no end;
- labels are -100 on every prompt token; the answer and its end token are trained;
- an example longer than ``max_length`` is dropped and counted, never cut: a cut answer followed by
  the end token would teach the model to stop mid-sentence.
"""


def to_messages(row):  #@save
    """One Alpaca row as a conversation: the user asks the instruction (and input), the assistant answers."""
    question = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
    return [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]


def build_example(row, tokenizer):  #@save
    """`input_ids` and `labels` of one row: one [gMASK]<sop>, -100 on the prompt, the answer and its end trained."""
    messages = to_messages(row)
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(messages)["input_ids"]  # tokenized once: one [gMASK]<sop>
    assert full[:len(prompt)] == prompt, "the template must write the prompt as the start of the conversation"
    end = tokenizer.convert_tokens_to_ids("<|user|>")  # the template never closes an answer: we do
    input_ids = full + [end]
    labels = [-100] * len(prompt) + full[len(prompt):] + [end]  # -100: the loss skips these positions
    return {"input_ids": input_ids, "labels": labels}


def prepare_dataset(dataset, tokenizer, max_length):  #@save
    """Every row built into an example; examples longer than `max_length` are dropped and counted, never cut."""
    built = dataset.map(build_example, fn_kwargs={"tokenizer": tokenizer}, remove_columns=dataset.column_names)
    kept = built.filter(lambda example: len(example["input_ids"]) <= max_length)
    dropped = len(built) - len(kept)
    print(f"{len(built)} rows -> {len(kept)} examples; {dropped} ({dropped / max(len(built), 1):.1%}) "
          f"longer than {max_length} tokens dropped")
    return kept
