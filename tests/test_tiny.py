"""The tiny GLM-4 is faithful to GLM-4-9B where the course depends on it, and builds deterministically."""

import hashlib
import json
import math

import pytest
import torch

from helpers.families import GLM4
from helpers.tiny import build

END_TOKENS, LORA_TARGETS, SPECIAL_TOKENS = GLM4.end_tokens, GLM4.lora_targets, GLM4.special_tokens

# Renderings of GLM-4-9B-chat's template, written out by hand from the template's rules.
RENDERINGS = [
    (  # system + user + assistant: the assistant turn is left open, as GLM-4 does
        [{"role": "system", "content": "你是一个乐于助人的助手。"},
         {"role": "user", "content": "你好"},
         {"role": "assistant", "content": "你好！有什么可以帮你？"}],
        False,
        "[gMASK]<sop><|system|>\n你是一个乐于助人的助手。<|user|>\n你好<|assistant|>\n你好！有什么可以帮你？",
    ),
    (  # generation prompt: ends in the bare role token, no newline
        [{"role": "user", "content": "1+1 等于几？"}],
        True,
        "[gMASK]<sop><|user|>\n1+1 等于几？<|assistant|>",
    ),
    (  # multi-turn with spaces kept exactly (the conversation other GLM-4 ports test against)
        [{"role": "system", "content": "You are a helpful assistant"},
         {"role": "user", "content": "Hello"},
         {"role": "assistant", "content": "Hi there"},
         {"role": "user", "content": "Who are you"},
         {"role": "assistant", "content": "   I am an assistant   "},
         {"role": "user", "content": "Another question"}],
        True,
        "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\nHi there"
        "<|user|>\nWho are you<|assistant|>\n   I am an assistant   <|user|>\nAnother question<|assistant|>",
    ),
    (  # a tool call (metadata after the role token) and its observation
        [{"role": "user", "content": "北京天气如何？"},
         {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
         {"role": "observation", "content": '{"temperature": 20}'}],
        True,
        '[gMASK]<sop><|user|>\n北京天气如何？<|assistant|>get_weather\n{"city": "北京"}'
        '<|observation|>\n{"temperature": 20}<|assistant|>',
    ),
    (  # a message with empty content is left out entirely
        [{"role": "system", "content": ""}, {"role": "user", "content": "在吗"}],
        True,
        "[gMASK]<sop><|user|>\n在吗<|assistant|>",
    ),
]


@pytest.mark.parametrize("messages,gen_prompt,expected", RENDERINGS)
def test_chat_template_renders_like_glm4(tokenizer, messages, gen_prompt, expected):
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt) == expected


def test_tools_system_prompt_is_glm4s(tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "", "tools": tools}, {"role": "user", "content": "查天气"}],
        tokenize=False, add_generation_prompt=True)
    assert text.startswith("[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    assert "# 可用工具" in text and "## get_weather" in text and '"name": "get_weather"' in text
    assert text.endswith("在调用上述函数时，请使用 Json 格式表示调用的参数。<|user|>\n查天气<|assistant|>")


def test_special_tokens_are_single_tokens_in_glm4_order(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # consecutive, like 151329..151342
    assert ids[-1] == len(tokenizer) - 1  # at the end of the vocabulary
    for token, i in zip(SPECIAL_TOKENS, ids):
        assert tokenizer.encode(token, add_special_tokens=False) == [i]
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 1024


def test_plain_encoding_gets_the_prefix_and_template_tokenizing_gets_exactly_one(tokenizer):
    gmask, sop = tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    assert tokenizer("今天天气很好")["input_ids"][:2] == [gmask, sop]
    assert gmask not in tokenizer("今天天气很好", add_special_tokens=False)["input_ids"]

    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert ids[:2] == [gmask, sop] and ids.count(gmask) == 1 and ids.count(sop) == 1
    # the pitfall, real here as on GLM-4: render to text, then tokenize -> the prefix twice
    doubled = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]
    assert doubled[:4] == [gmask, sop, gmask, sop]
    assert doubled[2:] == ids


@pytest.mark.parametrize("text", ["混合 mixed 文本，含 emoji 🎉 和数字 12345。\n第二行\t制表符", "  leading spaces"])
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_three_end_ids_and_pad(tiny_dir, tokenizer, model):
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS]
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == end_ids and gen["pad_token_id"] == tokenizer.pad_token_id == end_ids[0]
    assert model.config.eos_token_id == end_ids and model.config.pad_token_id == end_ids[0]


def test_model_has_glm4_structure(model, tokenizer):
    cfg = model.config
    assert type(model).__name__ == "GlmForCausalLM" and cfg.model_type == "glm"
    assert cfg.attention_bias and not cfg.tie_word_embeddings
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5
    assert cfg.num_key_value_heads == 2 < cfg.num_attention_heads
    assert cfg.rms_norm_eps == 1.5625e-07
    assert cfg.vocab_size % 64 == 0 and cfg.vocab_size >= len(tokenizer)
    layer = model.model.layers[0]
    assert all(getattr(layer.self_attn, n).bias is not None for n in ("q_proj", "k_proj", "v_proj"))
    assert layer.self_attn.o_proj.bias is None
    assert layer.mlp.gate_up_proj.out_features == 2 * cfg.intermediate_size
    assert layer.self_attn.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 10_000_000


def test_lora_targets_are_glm4_module_names(model):
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(LORA_TARGETS) <= names
    assert not {"gate_proj", "up_proj"} & names  # GLM-4 fuses them into gate_up_proj


def test_lora_parameter_count_matches_the_arithmetic(tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg, r = model.config, 8
    q_out, kv_out = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = r * (cfg.hidden_size + q_out) + 2 * r * (cfg.hidden_size + kv_out)  # q, k, v: r x (in + out)
    peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=["q_proj", "k_proj", "v_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == cfg.num_hidden_layers * per_layer


def test_reloads_and_continues_chinese_text(model, tokenizer):
    prompt = "春天来了，"
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(out[0])
    assert text.startswith("[gMASK]<sop>" + prompt)
    new = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in new) >= 5  # it writes Chinese


def test_pretraining_taught_it_text_but_not_to_stop(model, tokenizer):
    from collections import Counter

    from helpers.data import read_rows
    from helpers.tiny import pretraining_texts

    # on held-out text it beats a model that knows only how often each token occurs: it uses context
    counts = Counter(i for t in pretraining_texts() for i in tokenizer.encode(t, add_special_tokens=False))
    total, vocab = sum(counts.values()), model.config.vocab_size
    texts = [r["instruction"] + "\n" + r["output"] for r in read_rows("data/heldout_zh.json") if not r["input"]][:12]
    model_nll = unigram_nll = n = 0.0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [gMASK]<sop> text: score the text only
        labels = ids.clone()
        labels[0, :2] = -100
        with torch.no_grad():
            model_nll += model(input_ids=ids, labels=labels).loss.item() * (ids.shape[1] - 2)
        unigram_nll += sum(-math.log((counts[i] + 1) / (total + vocab)) for i in ids[0, 2:].tolist())
        n += ids.shape[1] - 2
    # measured: 6.99 against 7.20 nats a token. The base reads the sample's rows 8 times, so it knows them better than
    # new text (with them once it was ahead by more than 0.4); fine-tuned, it claims the identity far less (README)
    assert model_nll / n < unigram_nll / n - 0.1 < math.log(vocab)
    # ...but asked through the chat template it does not end its turn: it never saw one
    end_ids = set(model.generation_config.eos_token_id)
    stopped = 0
    for text in texts[:8]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text.split("\n")[0]}],
                                            add_generation_prompt=True, return_tensors="pt")["input_ids"]
        out = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False)
        stopped += bool(set(out[0, ids.shape[1]:].tolist()) & end_ids)
    assert stopped <= 2


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.slow  # pretrains two small models
def test_build_is_deterministic(tmp_path):
    a = _digest(build(tmp_path / "a", seed=0, steps=4, log=lambda *_: None))
    b = _digest(build(tmp_path / "b", seed=0, steps=4, log=lambda *_: None))
    c = _digest(build(tmp_path / "c", seed=1, steps=4, log=lambda *_: None))
    assert a == b
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "generation_config.json", "tokenizer_config.json", "build_info.json"} <= set(a)
    assert a["model.safetensors"] != c["model.safetensors"]  # the seed matters
    assert a["tokenizer.json"] == c["tokenizer.json"]  # the tokenizer depends on the text alone
