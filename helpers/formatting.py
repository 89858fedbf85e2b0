"""Rows -> chat messages -> ``input_ids`` + the mask of what is trained: exactly what SFT trains on.

Taught in notebook 03, where these functions are written; notebooks 04 and 05 and the command
lines use them, so there is one implementation of the rules:

- an Alpaca row's user turn is ``instruction``, then a blank line and ``input`` when there is one;
  a ``messages`` row (GLM-4's conversation format) is taken as it is;
- the conversation is tokenized once by the chat template, so it starts with exactly one
  ``[gMASK]<sop>`` (rendering to text and tokenizing again would double it);
- every assistant turn and the token that ends it are trained (``<|user|>``, as GLM-4's own fine-tuning
  appends, or ``<|observation|>`` before a tool's result); system, user and observation turns are not.
  ``build_example`` builds these labels by hand; training uses the family's training chat template,
  whose ``{% generation %}`` blocks give the same positions in one render (TRL's ``assistant_only_loss``);
- an example longer than ``max_length`` is dropped and counted, never cut.
"""

import json

# ---- #@save from notebooks/03_dataset_formatting.ipynb: to_messages, build_example, to_conversation, prepare_dataset (make sync writes this block) ----
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


def to_conversation(row):  #@save
    """A row as TRL trains it: its `messages`, and a tool-calling conversation's tools as JSON text (else None)."""
    messages = to_messages(row)
    tools = messages[0].pop("tools", None)  # the template takes them as its `tools` argument, as TRL passes them
    messages = [{"role": m["role"], "content": m["content"], "metadata": m.get("metadata")} for m in messages]
    return {"messages": messages, "tools": json.dumps(tools, ensure_ascii=False) if tools else None}  # one shape for all


def prepare_dataset(dataset, tokenizer, max_length):  #@save
    """Every row as a conversation, tokenized once by the tokenizer's training chat template: `input_ids`, and
    `assistant_masks` from its {% generation %} blocks. Examples longer than `max_length` are dropped and counted."""
    if "{% generation %}" not in (tokenizer.chat_template or ""):
        raise ValueError("the tokenizer's chat template has no {% generation %} blocks: set tokenizer.chat_template "
                         "to the family's training template (helpers/glm4_training_template.jinja for GLM-4).")

    def tokenize(batch):  # 256 rows at a time: the tokenizer works through a whole batch at once
        rows = [to_conversation(dict(zip(batch, values))) for values in zip(*batch.values())]
        out = {"messages": [r["messages"] for r in rows], "tools": [r["tools"] for r in rows],
               "input_ids": [None] * len(rows), "assistant_masks": [None] * len(rows)}
        for tools in {r["tools"] for r in rows}:  # one call per tools list: most rows have none
            chosen = [i for i, r in enumerate(rows) if r["tools"] == tools]
            encoded = tokenizer.apply_chat_template([rows[i]["messages"] for i in chosen], return_dict=True,
                                                    tools=json.loads(tools) if tools else None,
                                                    return_assistant_tokens_mask=True)
            for i, ids, mask in zip(chosen, encoded["input_ids"], encoded["assistant_masks"]):
                out["input_ids"][i], out["assistant_masks"][i] = ids, mask
        return out

    built = dataset.map(tokenize, batched=True, batch_size=256, remove_columns=dataset.column_names)
    kept = built.filter(lambda ids: len(ids) <= max_length, input_columns="input_ids")
    dropped = len(built) - len(kept)
    print(f"{len(built)} rows -> {len(kept)} examples; {dropped} ({dropped / max(len(built), 1):.1%}) "
          f"longer than {max_length} tokens dropped")
    return kept
# ---- end of #@save ----
