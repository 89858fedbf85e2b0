"""Serve a fine-tuned GLM-4 behind an OpenAI-compatible API (``/v1/chat/completions``, streaming or not).

Taught in notebook 06, where ``merge_adapter`` and ``request_problem`` are written. The adapter is
merged into its base and saved with a ``generation_config`` that stops on GLM-4's three end ids: a
server stops only on the ids it is told, and the fine-tuned model ends its answers with ``<|user|>``.

- ``--engine transformers`` (the default without a GPU or without vLLM): transformers' own server,
  ``transformers serve`` (the ``transformers[serving]`` extra), with every chat request checked first:
  a bad one gets HTTP 400 and one sentence, and the server keeps serving;
- ``--engine vllm`` (the default on a GPU when a ``vllm`` command is on PATH): ``vllm serve`` on the merged weights.

    python -m helpers.serve --adapter outputs/lora-tiny              # merge (once), then serve on port 8000
    python -m helpers.serve --model outputs/lora-tiny-merged --port 8001
    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "你是谁？"}]}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
from pathlib import Path

from peft import PeftModel
from transformers import AutoTokenizer

from helpers import CourseError, run_cli, shown
from helpers.checks import check_adapter, check_full_model, check_machine
from helpers.families import GLM4, family
from helpers.models import load_model
from helpers.recipes import Recipe


# ---- #@save from notebooks/06_serving.ipynb: merge_adapter, request_problem (make sync writes this block) ----
def merge_adapter(adapter_dir, merged_dir):  #@save
    """Base + adapter merged into one plain model, saved with its tokenizer and a generation_config that stops
    on GLM-4's three end ids. Merged on the CPU at full precision (a QLoRA base too), as in notebook 05."""
    adapter_dir, recipe = check_adapter(adapter_dir)
    full = recipe.replace(use_cpu=True, load_in_4bit=False)  # merging into 4-bit weights would lose the update
    model = PeftModel.from_pretrained(load_model(full), adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # with the chat template it was trained on
    end_tokens = family(recipe["family"]).end_tokens  # GLM-4: <|endoftext|>, <|user|>, <|observation|>
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(end_tokens))  # all three
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(merged_dir)  # config, weights and generation_config.json
    tokenizer.save_pretrained(merged_dir)
    recipe.replace(load_in_4bit=False).save(merged_dir)  # recipe.yaml: how it was made, its dtype and device
    return Path(merged_dir)


def request_problem(body):  #@save
    """What is wrong with a chat request's JSON body, in one sentence with the fix, or None when it can be answered."""
    example = 'for example [{"role": "user", "content": "你好"}]'
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list of messages, {example}"
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in GLM4.roles:
            return f"message {n} needs a 'role' among {', '.join(GLM4.roles)} (GLM-4's roles), {example}"
        if not isinstance(message.get("content"), (str, list)):
            return f"message {n} needs a 'content' that is a string, {example}"
    limit = body.get("max_tokens", body.get("max_completion_tokens", 1))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return f"'max_tokens' must be a whole number of at least 1, not {limit!r}"
    return None
# ---- end of #@save ----


def context_problem(body, tokenizer, context: int):
    """Whether a well-formed request fits the model's context: its prompt, plus ``max_tokens`` when given, at most
    ``context`` tokens. One sentence naming both numbers, as vLLM and OpenAI answer (400), or None when it fits."""
    try:
        prompt = len(tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True)["input_ids"])
    except Exception:  # content the template cannot render (parts, images): transformers' own handler answers it
        return None
    answer = body.get("max_tokens", body.get("max_completion_tokens")) or 0
    if prompt + max(answer, 1) <= context:
        return None
    return (f"the request needs {prompt + answer} tokens ({prompt} in the messages, {answer} for the answer) but the "
            f"model's context is {context} tokens: shorten the messages{' or lower max_tokens' if answer else ''}.")


def stops_on_end_ids(model_dir: Path, end_tokens) -> bool:
    """Whether a model directory's generation_config.json stops on all of its family's end ids (GLM-4's three)."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return False
    ends = set(AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(list(end_tokens)))
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return ends <= set(eos if isinstance(eos, list) else [eos])


def merged_for(adapter_dir) -> Path:
    """``<adapter>-merged`` beside the adapter (notebook 05 writes the same), merged again when the adapter is newer."""
    adapter_dir, recipe = check_adapter(adapter_dir)
    merged = adapter_dir.parent / f"{adapter_dir.name}-merged"
    weights = merged / "model.safetensors"
    fresh = weights.is_file() and weights.stat().st_mtime >= (adapter_dir / "adapter_model.safetensors").stat().st_mtime
    if fresh and stops_on_end_ids(merged, family(recipe["family"]).end_tokens):
        print(f"using {shown(merged)}, merged from {shown(adapter_dir)}")
    else:
        print(f"merging {shown(adapter_dir)} into {shown(merged)} ...", flush=True)
        merge_adapter(adapter_dir, merged)
    return merged


def check_model(model_dir) -> tuple[Path, Recipe]:
    """A full model directory that a server can stop on, and its recipe (see ``check_full_model``)."""
    model_dir, recipe = check_full_model(model_dir)
    end_tokens = family(recipe["family"]).end_tokens
    if not stops_on_end_ids(model_dir, end_tokens):
        raise CourseError(f"{shown(model_dir)}/generation_config.json does not list GLM-4's three end ids, so every "
                          "answer would run to max_tokens: serve the adapter with --adapter, which merges it again "
                          "with them, or set its eos_token_id to the ids of " + ", ".join(end_tokens) + ".")
    return model_dir, recipe


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def vllm_command(model_dir: Path, host: str, port: int) -> list[str]:
    """``vllm serve`` on merged weights; vLLM reads the end ids from generation_config.json (``auto``)."""
    return ["vllm", "serve", str(model_dir), "--served-model-name", model_dir.name, "--host", host,
            "--port", str(port), "--dtype", "bfloat16", "--generation-config", "auto"]


def serve_transformers(model_dir: Path, host: str, port: int, device: str) -> None:
    """``transformers serve`` pinned to one model, named by its directory, each chat request checked first."""
    from fastapi import HTTPException
    from transformers.cli.serve import Serve
    from transformers.cli.serving.chat_completion import ChatCompletionHandler

    from transformers import AutoConfig

    handle = ChatCompletionHandler.handle_request
    tokenizer, context = AutoTokenizer.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir).max_position_embeddings

    async def checked(self, body, request_id):  # before transformers' own handler: a bad request is the client's
        problem = request_problem(body) or context_problem(body, tokenizer, context)
        if problem:
            raise HTTPException(status_code=400, detail=problem)
        return await handle(self, body, request_id)

    ChatCompletionHandler.handle_request = checked
    os.chdir(model_dir.parent)  # so that the model's name is its directory's, not a long path
    Serve(force_model=model_dir.name, device=device, host=host, port=port, log_level="warning")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", help="a LoRA adapter directory: merged into <adapter>-merged first")
    parser.add_argument("--model", help="a merged (full) model directory")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: this machine only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--engine", choices=("auto", "transformers", "vllm"), default="auto",
                        help="auto: vLLM on a GPU when a `vllm` command is on PATH, else transformers")
    parser.add_argument("--device", help="cpu or cuda; default: the model's recipe")
    args = parser.parse_args(argv)
    if (args.adapter is None) == (args.model is None):
        raise CourseError("give either --adapter DIR (merged, then served) or --model DIR (a merged model).")
    if not port_free(args.host, args.port):
        raise CourseError(f"port {args.port} is in use (another server?): stop it, or choose another with --port.")
    model_dir, recipe = check_model(merged_for(args.adapter) if args.adapter else args.model)
    device = args.device or recipe.device
    check_machine(recipe.replace(use_cpu=device == "cpu"))
    vllm = shutil.which("vllm") is not None  # the command, from any environment on PATH (vLLM pins its own torch)
    engine = args.engine if args.engine != "auto" else ("vllm" if device == "cuda" and vllm else "transformers")
    if engine == "vllm":
        if device != "cuda":
            raise CourseError("vLLM serves on a GPU: use --engine transformers on the CPU.")
        if not vllm:
            raise CourseError("no `vllm` command on PATH: install vllm==0.33.0 in an environment of its own (it pins "
                              "its own torch), put that environment's bin/ on PATH, or use --engine transformers.")
        command = vllm_command(model_dir, args.host, args.port)
        print(" ".join(command), flush=True)
        os.execvp(command[0], command)
    print(f"serving {shown(model_dir)} as model {model_dir.name!r} on http://{args.host}:{args.port}/v1 "
          f"(transformers serve, {device}); Ctrl+C stops it", flush=True)
    serve_transformers(model_dir, args.host, args.port, device)
    return 0


if __name__ == "__main__":
    run_cli(main)
