"""Chat with a fine-tuned GLM-4: base model + LoRA adapter (or a merged or plain model), streaming.

Taught in notebook 05, where ``load_adapter``, ``stream_generate``, ``reply`` and ``Chat`` are written. Generation stops
on any of GLM-4's three end ids; the conversation goes through the chat template, so earlier turns
are part of every prompt.

    python -m helpers.chat --adapter outputs/lora-tiny            # base model + adapter
    python -m helpers.chat --model outputs/lora-tiny-merged       # a merged (or any plain) model
    echo "你是谁？" | python -m helpers.chat --adapter outputs/lora-tiny   # piped: one line a turn

Type /reset to start a new conversation and /exit (or end the input) to leave.
"""

import argparse
import sys
from threading import Thread

from peft import PeftModel
from transformers import AutoTokenizer, TextIteratorStreamer

from helpers import CourseError, run_cli
from helpers.checks import check_adapter, check_full_model
from helpers.models import load_model


# ---- #@save from notebooks/05_adapter_chat.ipynb: load_adapter, stream_generate, reply, Chat (make sync writes this block) ----
def load_adapter(adapter_dir):  #@save
    """Base model + LoRA adapter, loaded as they were trained, and the tokenizer saved with the adapter."""
    adapter_dir, recipe = check_adapter(adapter_dir)  # an adapter, its base is here, shapes and device fit
    model = PeftModel.from_pretrained(load_model(recipe), adapter_dir)  # LoRA layers added beside the base's
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # with the chat template it was trained on
    return model.eval(), tokenizer, recipe


def stream_generate(model, tokenizer, stream, **settings):  #@save
    """`model.generate(**settings)`, passing each piece of decoded text to `stream(piece)` as soon as it is generated."""
    streamer, result = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True), {}

    def run():  # generate() returns only when done, so it runs in a thread, which keeps its result here
        try:
            result["output"] = model.generate(**settings, streamer=streamer)
        except Exception as err:  # keep the error for the caller, and close the queue so the loop below ends
            result["error"] = err
            streamer.end()

    thread = Thread(target=run)
    thread.start()
    for piece in streamer:  # the streamer is a queue of text: each piece as soon as it is decoded
        stream(piece)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["output"]


def reply(model, tokenizer, messages, max_new_tokens=256, stream=None):  #@save
    """The assistant's next turn (greedy), and whether it ended on an end id rather than at `max_new_tokens`.
    With `stream`, each piece of text is passed to `stream(piece)` as soon as it is generated."""
    end_ids = model.generation_config.eos_token_id  # GLM-4: <|endoftext|>, <|user|>, <|observation|>
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    length, context = inputs["input_ids"].shape[1], model.config.max_position_embeddings
    if length >= context:  # no position is left for an answer: generating on would give garbage
        raise ValueError(f"the conversation is {length} tokens, but the model's context is {context}: shorten it.")
    settings = dict(**inputs.to(model.device), max_new_tokens=min(max_new_tokens, context - length),
                    do_sample=False, eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)
    output = model.generate(**settings) if stream is None else stream_generate(model, tokenizer, stream, **settings)
    new = output[0, length:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True).strip(), bool(new) and new[-1] in end_ids


class Chat:  #@save
    """One conversation: the history of turns, which the chat template turns into every next prompt."""

    def __init__(self, model, tokenizer, max_new_tokens=256, system=None):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.start = [{"role": "system", "content": system}] if system else []
        self.reset()

    def reset(self):
        self.history, self.dropped = list(self.start), 0  # dropped: old turns left out to fit the context

    def send(self, text, stream=None):
        """Answer one message and remember both turns; the oldest turns give way when the context fills up."""
        message, first = {"role": "user", "content": text}, len(self.start)  # old turns start after a system message
        context = self.model.config.max_position_embeddings
        length = lambda turns: len(self.tokenizer.apply_chat_template(turns, add_generation_prompt=True)["input_ids"])
        if length(self.start + [message]) < context:  # the message fits alone: make room for it and an answer
            while len(self.history) > first and length(self.history + [message]) > context - self.max_new_tokens:
                del self.history[first:first + 2]  # leave out the oldest question and its answer
                self.dropped += 1
        answer, stopped = reply(self.model, self.tokenizer, self.history + [message], self.max_new_tokens, stream)
        self.history += [message, {"role": "assistant", "content": answer}]  # a refused message is never kept
        return answer, stopped

    @property
    def turn(self):
        return sum(message["role"] == "user" for message in self.history)
# ---- end of #@save ----


def load_full_model(model_dir):
    """A plain (merged) model directory, loaded as its saved recipe says, or in this machine's best way."""
    model_dir, recipe = check_full_model(model_dir)  # its recipe, checked to fit this machine
    return load_model(recipe), AutoTokenizer.from_pretrained(model_dir), recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", help="a LoRA adapter directory from helpers.train or notebook 04")
    parser.add_argument("--model", help="a full model directory (merged, or a plain base/chat model)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--system", help="a system message for every conversation")
    args = parser.parse_args(argv)
    if (args.adapter is None) == (args.model is None):
        raise CourseError("give either --adapter DIR (base model + LoRA adapter) or --model DIR (a full model).")
    model, tokenizer, _ = load_adapter(args.adapter) if args.adapter else load_full_model(args.model)
    chat = Chat(model, tokenizer, args.max_new_tokens, args.system)
    interactive = sys.stdin.isatty()

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    if interactive:
        print("chat started: /reset starts over, /exit leaves")
    sys.stdin.reconfigure(errors="surrogateescape")  # bytes that are not UTF-8 arrive marked, not as an error
    while True:
        if interactive:
            write("you> ")
        line = sys.stdin.readline()
        if any("\udc80" <= ch <= "\udcff" for ch in line):
            line = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            write("(this line is not valid UTF-8: the bytes that are not were replaced with �)\n")
        text = line.strip()
        if not line or text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            write("(new conversation)\n")
        elif not text:
            write("(empty message: type a question, /reset or /exit)\n")
        else:
            dropped = chat.dropped
            try:
                write("assistant> ")
                _, stopped = chat.send(text, stream=write)
            except ValueError as err:  # too long for the model's context: refused, the chat goes on
                write(f"(message refused: {err})\n")
                continue
            if chat.dropped > dropped:
                write(f"(the {chat.dropped - dropped} oldest turn(s) were left out to fit the model's context)\n")
            write("\n" if stopped else f"\n(stopped at {args.max_new_tokens} tokens without an end token)\n")


if __name__ == "__main__":
    run_cli(main)
