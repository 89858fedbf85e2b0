import dataclasses

import pytest

from helpers import CourseError
from helpers.glm4 import LORA_TARGETS
from helpers.profiles import PROFILES, Profile, auto_profile, get_profile, override_flags


def test_profiles_are_frozen_and_complete():
    assert set(PROFILES) == {"glm4-9b", "glm4-9b-qlora", "tiny"}
    for name, profile in PROFILES.items():
        assert profile.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            profile.learning_rate = 1.0  # type: ignore[misc]
        assert set(profile.lora_target_modules) <= set(LORA_TARGETS)
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


T4 = {"name": "Tesla T4", "bf16": False, "total_gb": 15.8}
CARD_16GB = {"name": "RTX 4060 Ti 16GB", "bf16": True, "total_gb": 17.2}  # a "16 GB" card: 17.2e9 bytes
CARD_24GB = {"name": "RTX 4090", "bf16": True, "total_gb": 25.4}
CARD_80GB = {"name": "A100 80GB", "bf16": True, "total_gb": 85.1}
CARD_8GB = {"name": "RTX 3070", "bf16": True, "total_gb": 8.6}


@pytest.mark.parametrize("gpu,bitsandbytes,weights,chosen,reason", [
    (None, True, True, "tiny", "no CUDA GPU found"),
    (T4, True, True, "tiny", "Tesla T4 has no bf16"),
    (CARD_80GB, True, False, "tiny", "weights/glm-4-9b-hf is missing: python -m helpers.download glm4-9b"),
    (CARD_24GB, True, False, "tiny", "is missing"),
    (CARD_16GB, True, False, "tiny", "is missing"),
    (CARD_80GB, True, True, "glm4-9b", "enough for glm4-9b"),
    (CARD_80GB, False, True, "glm4-9b", "enough for glm4-9b"),
    (CARD_24GB, False, True, "glm4-9b", "enough for glm4-9b (about 22 GB)"),
    (CARD_16GB, True, True, "glm4-9b-qlora", "enough for glm4-9b-qlora (about 10 GB)"),
    (CARD_16GB, False, True, "tiny", "enough for 4-bit QLoRA once bitsandbytes is installed: pip install"),
    (CARD_8GB, True, True, "tiny", "less than even 4-bit QLoRA needs"),
])
def test_auto_chooses_for_a_described_machine_and_says_why(gpu, bitsandbytes, weights, chosen, reason):
    profile, why = auto_profile(gpu=gpu, bitsandbytes=bitsandbytes, weights=weights)
    assert profile.name == chosen and reason in why and "\n" not in why


def test_get_profile_applies_overrides_and_rejects_unknown_names():
    p = get_profile("tiny", max_steps=7, learning_rate=1e-3)
    assert (p.max_steps, p.learning_rate) == (7, 1e-3)
    assert PROFILES["tiny"].max_steps == -1  # the original stays as it was
    with pytest.raises(CourseError, match="unknown profile 'glm5'.*auto, glm4-9b, glm4-9b-qlora, tiny"):
        get_profile("glm5")
    with pytest.raises(CourseError, match="no setting lr"):
        get_profile("tiny", lr=1.0)


def test_get_profile_auto_prints_its_choice(capsys):
    name = get_profile("auto").name
    assert capsys.readouterr().out.startswith(f"profile: {name} (")


def test_every_field_but_the_name_is_an_optional_flag():
    fields = {f.name: f for f in dataclasses.fields(override_flags())}
    assert set(fields) == {f.name for f in dataclasses.fields(Profile)} - {"name"}
    assert all(f.default is None and f.metadata["help"] for f in fields.values())


def test_a_profile_saved_beside_an_adapter_loads_back(tmp_path):
    profile = get_profile("tiny", lora_r=4)
    profile.save(tmp_path)
    assert Profile.load(tmp_path) == profile and Profile.load(tmp_path / "nothing") is None
