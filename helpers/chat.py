"""Chat with a fine-tuned GLM-4: base model + LoRA adapter (or a merged or plain model), streaming.

Taught in notebook 05. Generation stops on any of GLM-4's three end ids; the conversation goes
through the chat template, so earlier turns are part of every prompt.

    python -m helpers.chat --adapter outputs/lora-tiny            # base model + adapter
    python -m helpers.chat --model outputs/lora-tiny-merged       # a merged (or any plain) model
    echo "你是谁？" | python -m helpers.chat --adapter outputs/lora-tiny   # piped: one line a turn

Type /reset to start a new conversation and /exit (or end the input) to leave.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers import CourseError, resolve, run_cli


def _shown(path: Path) -> str:
    from helpers import REPO_ROOT

    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def adapter_base(adapter_dir) -> Path:
    """The base model an adapter was trained on, after checking the directory is an adapter."""
    adapter_dir = resolve(adapter_dir)
    if not adapter_dir.is_dir():
        raise CourseError(f"{_shown(adapter_dir)} does not exist: train one with `python -m helpers.train` "
                          "(or notebook 04), or check the --adapter path.")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        hint = (" (it holds a full model: use --model instead)" if (adapter_dir / "config.json").is_file() else "")
        raise CourseError(f"{_shown(adapter_dir)} is not a LoRA adapter: it has no adapter_config.json{hint}.")
    from helpers.train import run_record

    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    # the course records the base relative to the repository, so an adapter keeps working after a move
    base = run_record(adapter_dir).get("base_model") or base
    base_dir = resolve(base)
    if not (base_dir / "config.json").is_file():
        raise CourseError(f"the adapter's base model {base or '(not recorded)'} is missing: build or download it "
                          "(`make tiny`, or `python -m helpers.download glm4-9b`) and run again.")
    return base_dir


def load_chat_model(adapter=None, model=None, device: str | None = None):
    """(model, tokenizer) for chatting: base + adapter, or a plain model directory, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from helpers.models import load_tokenizer, missing_error

    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft calls a renamed property
    if (adapter is None) == (model is None):
        raise CourseError("give either --adapter DIR (base model + LoRA adapter) or --model DIR (a full model).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if model is not None:
        model_dir = resolve(model)
        if not (model_dir / "config.json").is_file():
            hint = " (it is a LoRA adapter: use --adapter)" if (model_dir / "adapter_config.json").is_file() else ""
            raise (missing_error(model_dir) if not hint else CourseError(f"{_shown(model_dir)} is not a full model{hint}."))
        loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        return loaded.eval(), load_tokenizer(model_dir)

    from peft import PeftModel

    from helpers.models import load_weights
    from helpers.profiles import Profile
    from helpers.train import run_record

    adapter_dir = resolve(adapter)
    base_dir = adapter_base(adapter_dir)
    trained = run_record(adapter_dir).get("profile")
    if trained:  # the base as it was trained: dtype, device, 4-bit for QLoRA
        base = load_weights(Profile.from_dict(trained, model_path=str(base_dir)))
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    try:
        loaded = PeftModel.from_pretrained(base, adapter_dir)
    except (RuntimeError, ValueError) as err:  # shape mismatch: trained on another model
        raise CourseError(f"{_shown(adapter_dir)} does not fit {_shown(base_dir)} ({str(err).splitlines()[0][:120]}): "
                          "it was trained on another base model; use the base it was trained on.") from None
    # the adapter directory carries the tokenizer and chat template it was trained with
    return loaded.eval(), load_tokenizer(adapter_dir)


def reply(model, tokenizer, messages, max_new_tokens: int = 256, stream=None) -> tuple[str, bool]:
    """The assistant's next turn (greedy) and whether it ended on one of GLM-4's end ids rather than
    at ``max_new_tokens``; with ``stream``, each new piece of text is passed to ``stream(text)`` as it comes."""
    from threading import Thread

    import torch
    from transformers import TextIteratorStreamer

    from helpers.models import end_token_ids

    end_ids = end_token_ids(tokenizer)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_ids,
                    pad_token_id=tokenizer.pad_token_id)
    result = {}

    def run(**extra):
        with torch.no_grad():
            result["ids"] = model.generate(**inputs, **settings, **extra)

    if stream is None:
        run()
    else:  # generate in a thread; the streamer hands over decoded text as tokens arrive
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = Thread(target=run, kwargs={"streamer": streamer})
        thread.start()
        for piece in streamer:
            stream(piece)
        thread.join()
    new = result["ids"][0, inputs["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] in end_ids
    return tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True).strip(), stopped


def reply_batch(model, tokenizer, conversations, max_new_tokens: int = 256, batch_size: int = 16) -> list[tuple[str, bool]]:
    """``reply`` for many conversations at once, ``batch_size`` a call: the same greedy answers, several
    times faster. Prompts are padded on the left, so every answer starts right after its own prompt."""
    import torch

    from helpers.models import end_token_ids

    end_ids = end_token_ids(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(conversations), batch_size):
            inputs = tokenizer.apply_chat_template(conversations[start:start + batch_size], add_generation_prompt=True,
                                                   padding=True, return_tensors="pt", return_dict=True).to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_ids,
                                     pad_token_id=tokenizer.pad_token_id)
            for new in out[:, inputs["input_ids"].shape[1]:].tolist():
                end = next((i for i, token in enumerate(new) if token in end_ids), None)  # the rest is padding
                text = tokenizer.decode(new if end is None else new[:end], skip_special_tokens=True)
                answers.append((text.strip(), end is not None))
    finally:
        tokenizer.padding_side = side
    return answers


def chat_loop(model, tokenizer, lines, write, max_new_tokens: int = 256, system: str | None = None) -> int:
    """Read user turns from ``lines``, write streamed answers with ``write``; returns the turns answered."""
    history = [{"role": "system", "content": system}] if system else []
    turns = 0
    for line in lines:
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system else []
            write("(new conversation)\n")
            continue
        if not text:
            write("(empty message: type a question, /reset or /exit)\n")
            continue
        history.append({"role": "user", "content": text})
        write("assistant> ")
        answer, stopped = reply(model, tokenizer, history, max_new_tokens, stream=write)
        write("\n" if stopped else f"\n(stopped at {max_new_tokens} tokens without an end token)\n")
        history.append({"role": "assistant", "content": answer})
        turns += 1
    return turns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", help="a LoRA adapter directory from helpers.train or notebook 04")
    parser.add_argument("--model", help="a full model directory (merged, or a plain base/chat model)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--system", help="a system message for every conversation")
    args = parser.parse_args(argv)
    model, tokenizer = load_chat_model(args.adapter, args.model)
    interactive = sys.stdin.isatty()

    def lines():
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    if interactive:
        print("chat started: /reset starts over, /exit leaves")
    chat_loop(model, tokenizer, lines(), write, args.max_new_tokens, args.system)
    return 0


if __name__ == "__main__":
    run_cli(main)
