"""helpers.models on the tiny GLM-4: loading, end ids, parameter counts, memory, and the learner's errors."""

import dataclasses
import json

import pytest
import torch

from helpers import CourseError
from helpers.models import (count_parameters, end_token_ids, load_model, load_tokenizer, parameter_kind,
                            weights_memory_gb)
from helpers.profiles import get_profile


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(get_profile("tiny"))


def test_load_model_gives_the_base_model_in_eval_mode(loaded):
    model, tokenizer = loaded
    assert type(model).__name__ == "GlmForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer("你好")["input_ids"][:2] == tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])


def test_load_tokenizer_reads_the_model_directory(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|endoftext|>"


def test_end_token_ids_are_the_three_glm4_end_ids_in_order(loaded, tiny_dir):
    model, tokenizer = loaded
    ids = end_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|endoftext|>", "<|user|>", "<|observation|>"]
    saved = json.loads((tiny_dir / "generation_config.json").read_text())["eos_token_id"]
    assert ids == saved == list(model.generation_config.eos_token_id)


def test_count_parameters_groups_every_parameter_by_kind(loaded):
    model, _ = loaded
    counts = count_parameters(model)
    assert list(counts) == ["embeddings", "attention", "mlp", "norms", "lm_head", "total"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    cfg = model.config
    assert counts["embeddings"] == counts["lm_head"] == cfg.vocab_size * cfg.hidden_size
    # fused gate_up_proj (hidden -> 2 x intermediate) and down_proj, no bias
    assert counts["mlp"] == cfg.num_hidden_layers * 3 * cfg.hidden_size * cfg.intermediate_size
    assert counts["norms"] == (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size


def test_count_parameters_gives_glm4_9b_figures_on_the_meta_device():
    from transformers import GlmConfig, GlmForCausalLM

    with torch.device("meta"):  # the 9B shape without allocating memory
        model = GlmForCausalLM(GlmConfig())
    counts = count_parameters(model)
    assert counts["total"] == 9_399_951_360
    assert counts["embeddings"] == counts["lm_head"] == 151_552 * 4096


def test_parameter_kind_knows_lora_and_projection_names():
    assert parameter_kind("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == "lora"
    assert parameter_kind("model.layers.3.mlp.gate_up_proj.weight") == "mlp"
    assert parameter_kind("model.layers.3.self_attn.v_proj.bias") == "attention"
    assert parameter_kind("model.norm.weight") == "norms"


def test_weights_memory_counts_parameters_and_buffers(loaded):
    model, _ = loaded
    params = sum(p.numel() * 4 for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert weights_memory_gb(model) == pytest.approx((params + buffers) / 1024**3)


def test_missing_tiny_weights_say_make_tiny(tmp_path):
    profile = dataclasses.replace(get_profile("tiny"), model_path=str(tmp_path / "nothing"))
    with pytest.raises(CourseError, match="not found: check the path"):
        load_model(profile)
    # the real tiny directory, when missing, names the command that builds it
    from helpers import models

    err = models.missing_error(get_profile("tiny").model_dir)
    assert str(err) == "weights/tiny-glm4 not found: build it with `make tiny`."


def test_missing_9b_weights_say_how_to_download(tmp_path):
    from helpers import models

    msg = str(models.missing_error(get_profile("glm4-9b").model_dir))
    assert msg.startswith("weights/glm-4-9b-hf not found: download it with `python -m helpers.download glm4-9b`")
    assert 'PROFILE = "tiny"' in msg and msg.count(".") >= 1 and "\n" not in msg
    with pytest.raises(CourseError, match="not found: check the path"):
        load_tokenizer(tmp_path)


def test_tiny_has_no_chat_model():
    with pytest.raises(CourseError, match="tiny has no chat model") as err:
        load_model(get_profile("tiny"), "chat")
    assert "PROFILE" in str(err.value)
    with pytest.raises(CourseError, match="which="):
        load_model(get_profile("tiny"), "instruct")


def test_cuda_profile_on_a_machine_without_gpu_is_refused_before_loading(tiny_dir):
    from helpers.env import gpu_info

    if gpu_info() is not None:
        pytest.skip("this machine has a CUDA GPU")
    for profile in (get_profile("glm4-9b"), dataclasses.replace(get_profile("tiny"), device="cuda")):
        with pytest.raises(CourseError) as err:
            load_model(profile)
        assert "no" in str(err.value) and 'PROFILE = "tiny"' in str(err.value)
        assert "CUDA GPU" in str(err.value)


def test_tokenizer_saved_without_a_template_gets_glm4s(tmp_path, tiny_dir):
    import shutil

    from helpers.models import load_tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)  # no chat_template.jinja, like some base checkpoints
    tokenizer = load_tokenizer(tmp_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "[gMASK]<sop><|user|>\n你好<|assistant|>"
