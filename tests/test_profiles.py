import dataclasses

import pytest

from helpers import CourseError
from helpers.profiles import GLM4_LORA_TARGETS, PROFILES, Profile, auto_profile, get_profile


def test_profiles_are_frozen_and_complete():
    assert set(PROFILES) == {"glm4-9b", "glm4-9b-qlora", "tiny"}
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert isinstance(profile, Profile)
        with pytest.raises(dataclasses.FrozenInstanceError):
            profile.learning_rate = 1.0  # type: ignore[misc]
        assert set(profile.lora_target_modules) <= set(GLM4_LORA_TARGETS)
        assert profile.max_steps == -1 or profile.max_steps > 0


def test_9b_profile_follows_the_original_recipe():
    p = PROFILES["glm4-9b"]
    assert (p.lora_r, p.lora_alpha, p.lora_dropout) == (8, 32, 0.1)
    assert p.lora_target_modules == ("q_proj", "k_proj", "v_proj")
    assert (p.learning_rate, p.batch_size, p.max_length, p.num_epochs) == (5e-4, 2, 512, 3.0)
    assert (p.dtype, p.device) == ("bfloat16", "cuda")
    assert p.model_path == "weights/glm-4-9b-hf" and p.chat_model_path == "weights/glm-4-9b-chat-hf"


def test_qlora_profile_is_the_9b_recipe_on_4bit_weights():
    base, qlora = PROFILES["glm4-9b"], PROFILES["glm4-9b-qlora"]
    assert qlora.load_in_4bit and not base.load_in_4bit
    same = {f for f in base.as_dict() if f not in ("name", "load_in_4bit", "output_dir")}
    assert {f: getattr(qlora, f) for f in same} == {f: getattr(base, f) for f in same}


def test_tiny_profile_runs_on_cpu_in_fp32():
    p = PROFILES["tiny"]
    assert (p.dtype, p.device, p.chat_model_path) == ("float32", "cpu", None)
    assert p.model_path == "weights/tiny-glm4"


def test_auto_picks_tiny_without_a_gpu_and_says_why():
    profile, reason = auto_profile()
    assert profile.name == "tiny"  # this machine and CI have no CUDA GPU
    assert "CUDA" in reason and "\n" not in reason


def test_get_profile_applies_overrides_and_rejects_unknown_names():
    p = get_profile("tiny", max_steps=7, learning_rate=1e-3)
    assert (p.max_steps, p.learning_rate) == (7, 1e-3)
    assert PROFILES["tiny"].max_steps == -1  # the original stays as it was
    with pytest.raises(CourseError, match="unknown profile 'glm5'.*auto, glm4-9b, glm4-9b-qlora, tiny"):
        get_profile("glm5")
    with pytest.raises(CourseError, match="no setting lr"):
        get_profile("tiny", lr=1.0)


def test_get_profile_auto_prints_its_choice(capsys):
    assert get_profile("auto").name == "tiny"
    assert capsys.readouterr().out.startswith("profile: tiny (")
