"""Rows -> chat messages -> ``input_ids`` + ``labels``: exactly what SFT trains on.

Taught in notebook 03, where these functions are written; notebooks 04 and 05 and the command
lines use them, so there is one implementation of the rules:

- an Alpaca row's user turn is ``instruction``, then a blank line and ``input`` when there is one;
  a ``messages`` row (GLM-4's conversation format) is taken as it is;
- the conversation is tokenized once by the chat template, so it starts with exactly one
  ``[gMASK]<sop>`` (rendering to text and tokenizing again would double it);
- the last answer is followed by ``<|user|>``, as in GLM-4's own fine-tuning, because the template never
  closes an assistant turn and a model never shown an end learns no end; an earlier answer is ended by
  the role token that follows it (``<|user|>``, or ``<|observation|>`` after a tool call);
- labels are -100 on every system, user and observation token; every assistant turn and the token
  that ends it are trained;
- an example longer than ``max_length`` is dropped and counted, never cut: a cut answer followed by
  the end token would teach the model to stop mid-sentence.
"""

import json


def to_messages(row):  #@save
    """A row as a conversation: a `messages` row as it is; an Alpaca row as the user's question and the answer."""
    if row.get("messages"):  # GLM-4's format; a Dataset keeps the tools as JSON text, and None for a missing key
        messages = [{key: value for key, value in message.items() if value is not None} for message in row["messages"]]
        if row.get("tools"):
            messages[0]["tools"] = json.loads(row["tools"])  # they belong to the system message
        return messages
    question = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
    return [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]


def build_example(row, tokenizer):  #@save
    """`input_ids` and `labels` of one row: one [gMASK]<sop>; every assistant turn and the token after it trained,
    -100 on everything else (system, user and observation turns, and each <|assistant|> that opens a turn)."""
    messages = to_messages(row)
    full = tokenizer.apply_chat_template(messages)["input_ids"]  # tokenized once: one [gMASK]<sop>
    end = tokenizer.convert_tokens_to_ids("<|user|>")  # the template never closes the last answer: we do
    input_ids, labels = full + [end], [-100] * (len(full) + 1)  # -100: the loss skips these positions
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:turn], add_generation_prompt=True)["input_ids"]
        through = tokenizer.apply_chat_template(messages[:turn + 1])["input_ids"]  # up to the end of this answer
        assert full[:len(through)] == through and through[:len(before)] == before, \
            "the template must write every turn after the earlier ones"
        answer = slice(len(before), len(through) + 1)  # + 1: the token that ends it, <|user|> or <|observation|>
        labels[answer] = input_ids[answer]
    return {"input_ids": input_ids, "labels": labels}


def prepare_dataset(dataset, tokenizer, max_length):  #@save
    """Every row built into an example; examples longer than `max_length` are dropped and counted, never cut."""
    built = dataset.map(build_example, fn_kwargs={"tokenizer": tokenizer}, remove_columns=dataset.column_names)
    kept = built.filter(lambda example: len(example["input_ids"]) <= max_length)
    dropped = len(built) - len(kept)
    print(f"{len(built)} rows -> {len(kept)} examples; {dropped} ({dropped / max(len(built), 1):.1%}) "
          f"longer than {max_length} tokens dropped")
    return kept
