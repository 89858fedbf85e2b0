"""Build the tiny GLM-4: a real ``GlmForCausalLM`` of a few million parameters, offline, in about 3 minutes on 2 cores.

Taught in notebooks 00-02. It has GLM-4-9B's structure (q/k/v bias, fused ``gate_up_proj``,
partial rotary 0.5, 2 KV heads, RMSNorm eps 1.5625e-07), a byte-level BPE tokenizer trained on
the course's own text with all of GLM-4's special tokens and its ``[gMASK]<sop>`` prefix,
GLM-4-9B-chat's chat template, and the three end ids. It is then pretrained briefly as a plain
language model (no chat template, no end token), so like ``glm-4-9b-hf`` it continues text and
has learned neither the chat format nor when to stop: that is what the course's SFT teaches.

The build is deterministic: the same seed gives byte-identical files (on the same library
versions; the build uses 2 CPU threads whatever the machine has).

    python -m helpers.tiny                      # -> weights/tiny-glm4
    python -m helpers.tiny --out /tmp/tiny --steps 20
    python -m helpers.tiny --out weights/tiny-rep1 --sample-repeat 1   # a variant base, for the README's table
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from helpers import CourseError, resolve, run_cli, shown
from helpers.data import clean_rows, read_rows
from helpers.families import GLM4

DEFAULT_OUT = "weights/tiny-glm4"
# GLM-4's pre-tokenizer split: letters, up to 3 digits, punctuation runs, newlines, spaces.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

BPE_VOCAB = 3000  # learned tokens (256 bytes included); GLM-4 has 151,329. Small data wants a small vocabulary
MODEL_SHAPE = dict(  # GLM-4-9B: 4096 hidden, 40 layers, 32 heads of 128, 2 KV heads, 13696 MLP
    hidden_size=192,  # 128 wide (1.6M parameters) kept too little: its fine-tuned answers looped and
    num_hidden_layers=4,  # missed the identity on new wordings (stop rate 0.85-0.91, identity 56-84%)
    num_attention_heads=6,
    head_dim=32,
    num_key_value_heads=2,
    intermediate_size=640,  # GLM-4's MLP ratio, 13696 / 4096 = 3.34
    max_position_embeddings=1024,
)
# sample_repeat: the sample's rows come 8 times, so the base knows what the fine-tune's answers say (pretraining loss
# 2.06 against 3.84 with them once, in the same 450 steps). Measured (README, "what the fine-tune learned"): its
# fine-tuned answers to unrelated questions claim the identity far less often (23% against 40% with the rows once,
# same data and schedule)
PRETRAIN = dict(steps=450, batch_size=16, block=128, lr=3e-3, warmup=20, weight_decay=0.01, sample_repeat=8)
SOURCES = ("data/corpus_zh.txt", "data/alpaca_zh_sample.json")  # never the identity or held-out rows


def pretraining_texts(sample_repeat: int = PRETRAIN["sample_repeat"]) -> list[str]:
    """Plain paragraphs: the corpus, and the sample's training rows as running text, ``sample_repeat`` times."""
    corpus, sample = (resolve(p) for p in SOURCES)
    if not corpus.is_file():
        raise CourseError(f"{corpus} is missing: restore it with `git checkout -- data/`.")
    texts = [line.strip() for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = ["\n".join(part for part in (row["instruction"], row["input"], row["output"]) if part)
            for row in clean_rows(read_rows(sample), sample.name)]
    return texts + rows * sample_repeat


def build_tokenizer(texts: list[str], model_max_length: int):
    """A byte-level BPE tokenizer wrapped as GLM-4's is, with the ``[gMASK]<sop>`` prefix."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM4.special_tokens])
    prefix = [("[gMASK]", tok.token_to_id("[gMASK]")), ("<sop>", tok.token_to_id("<sop>"))]
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK]:0 <sop>:0 $A:0", pair="[gMASK]:0 <sop>:0 $A:0 $B:1", special_tokens=prefix)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # GLM-4: pad = eos, so never mask labels by pad id
        extra_special_tokens=list(GLM4.special_tokens),
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = GLM4.chat_template.read_text(encoding="utf-8")
    return tokenizer


def build_model(tokenizer):
    """An untrained ``GlmForCausalLM`` of GLM-4's structure at the tiny shape."""
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    ids = [tokenizer.convert_tokens_to_ids(t) for t in GLM4.end_tokens]
    pad = tokenizer.pad_token_id
    config = GlmConfig(
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,  # padded like GLM-4's 151,552
        rms_norm_eps=1.5625e-07,
        attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=False,
        # GLM-4's 0.02 suits its 4096 width. At 128 wide it trained a base that a short LoRA run barely
        # moved; 1/sqrt(128) = 0.088 one that memorised its text. Measured here, 0.05 gives both: held-out
        # text better than a unigram model, and a LoRA run that learns to answer and to stop (also at 192).
        initializer_range=0.05,
        pad_token_id=pad,
        eos_token_id=ids,
        bos_token_id=None,
        **MODEL_SHAPE,
    )
    model = GlmForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=ids, pad_token_id=pad)
    return model


def pretrain(model, tokenizer, texts: list[str], seed: int, settings: dict = PRETRAIN, log=print) -> float:
    """Plain next-token training on packed blocks, each starting ``[gMASK]<sop>``; returns the last loss.
    ``settings``: PRETRAIN's keys (steps, batch size, block length, learning rate, warmup, weight decay)."""
    import torch

    steps = settings["steps"]

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=gen).tolist()
    newline = tokenizer.encode("\n", add_special_tokens=False)
    stream = []
    for i in order:
        stream += tokenizer.encode(texts[i], add_special_tokens=False) + newline
    body = settings["block"] - 2
    prefix = tokenizer.encode("", add_special_tokens=True)  # [gMASK]<sop>, from the tokenizer itself
    blocks = torch.tensor([prefix + stream[i:i + body] for i in range(0, len(stream) - body + 1, body)])

    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / settings["warmup"])
                                              * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    perm, pos, loss = torch.randperm(len(blocks), generator=gen), 0, None
    for step in range(steps):
        if pos + settings["batch_size"] > len(perm):
            perm, pos = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[perm[pos:pos + settings["batch_size"]]]
        pos += settings["batch_size"]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step + 1:>4}/{steps}  loss {loss.item():.3f}")
    model.eval()
    return loss.item() if loss is not None else float("nan")


def build(out=DEFAULT_OUT, seed: int = 0, steps: int = PRETRAIN["steps"], log=print, **overrides) -> Path:
    """Build, pretrain and save the tiny GLM-4 to ``out``; an existing model there is replaced only at the end.
    ``overrides`` replace PRETRAIN's settings (``lr=..., sample_repeat=...``) for this build."""
    import torch

    out = resolve(out)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # fixed, so the floating-point sums and the files do not depend on the machine
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        settings = {**PRETRAIN, **overrides, "steps": steps}
        texts = pretraining_texts(settings["sample_repeat"])
        tokenizer = build_tokenizer(texts, MODEL_SHAPE["max_position_embeddings"])
        model = build_model(tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"tiny GLM-4: {n_params:,} parameters, vocabulary {len(tokenizer)} "
            f"(padded to {model.config.vocab_size}); pretraining {steps} steps")
        final_loss = pretrain(model, tokenizer, texts, seed, settings, log) if steps > 0 else float("nan")

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            info = {"seed": seed, "pretrain_steps": steps, "final_loss": round(final_loss, 4),
                    "parameters": n_params, "sources": list(SOURCES), **settings, "shape": MODEL_SHAPE}
            (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            for f in tmp.iterdir():
                f.chmod(0o644)
            tmp.chmod(0o755)  # mkdtemp made it private
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    log(f"saved {shown(out)} in {time.perf_counter() - start:.0f} s")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PRETRAIN["steps"], help="pretraining steps")
    parser.add_argument("--lr", type=float, default=PRETRAIN["lr"], help="pretraining learning rate")
    parser.add_argument("--sample-repeat", type=int, default=PRETRAIN["sample_repeat"],
                        help="how many times the sample's rows join the corpus in the pretraining text")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.sample_repeat < 0 or args.lr <= 0:
        raise CourseError("--steps and --sample-repeat must be 0 or more, and --lr above 0.")
    build(args.out, args.seed, args.steps, lr=args.lr, sample_repeat=args.sample_repeat)
    return 0


if __name__ == "__main__":
    run_cli(main)
