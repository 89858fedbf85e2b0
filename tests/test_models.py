"""Loading models as a profile says, and the checks that run before: device, weights, tokenizer, template."""

import dataclasses
import shutil

import pytest
import torch

from helpers import CourseError
from helpers.checks import check_device, check_weights, missing_error, preflight
from helpers.models import load_model
from helpers.profiles import PROFILES, get_profile


def test_load_model_gives_the_base_model_in_eval_mode(tiny_dir):
    model = load_model(get_profile("tiny"))
    assert type(model).__name__ == "GlmForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert list(model.generation_config.eos_token_id) == [3000, 3007, 3009]  # GLM-4's three end ids, tiny's ids


def test_load_model_loads_another_directory_in_the_profiles_dtype(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "copy")
    model = load_model(dataclasses.replace(get_profile("tiny"), dtype="bfloat16"), tmp_path / "copy")
    assert model.dtype == torch.bfloat16


def test_missing_weights_say_how_to_get_them(tmp_path):
    assert str(missing_error(get_profile("tiny").model_dir)) == "weights/tiny-glm4 not found: build it with `make tiny`."
    msg = str(missing_error(get_profile("glm4-9b").model_dir))
    assert msg.startswith("weights/glm-4-9b-hf not found: download it with `python -m helpers.download glm4-9b`")
    assert 'PROFILE = "tiny"' in msg and "\n" not in msg
    with pytest.raises(CourseError, match="not found: check the path"):
        check_weights(get_profile("tiny"), tmp_path / "nothing")


def test_a_model_directory_without_tokenizer_or_template_is_refused(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(CourseError, match="has no tokenizer"):
        check_weights(get_profile("tiny"), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja, like some base checkpoints
        shutil.copy(tiny_dir / name, tmp_path / name)
    with pytest.raises(CourseError, match="has no chat template: run `python -m helpers.download glm4-9b`"):
        check_weights(get_profile("tiny"), tmp_path)
    assert check_weights(get_profile("tiny")) == get_profile("tiny").model_dir


@pytest.mark.parametrize("gpu,message", [
    (None, 'needs a CUDA GPU and none was found: set PROFILE = "tiny"'),
    ({"name": "Tesla T4", "bf16": False, "total_gb": 15.8}, "Tesla T4 has no bf16, which GLM-4 needs to train"),
    ({"name": "RTX A4000", "bf16": True, "total_gb": 17.2}, "needs about 22 GB of GPU memory but this GPU has 17 GB: "
                                                            "use --profile glm4-9b-qlora"),
    ({"name": "RTX 3070", "bf16": True, "total_gb": 8.6}, "use a larger GPU, several GPUs"),
])
def test_a_gpu_that_cannot_train_the_9b_is_refused_in_one_sentence(gpu, message):
    with pytest.raises(CourseError, match="") as err:
        check_device(PROFILES["glm4-9b"], gpu=gpu)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_fitting_gpu_passes_and_4bit_needs_bitsandbytes():
    import importlib.util

    a100 = {"name": "A100", "bf16": True, "total_gb": 85.0}
    check_device(PROFILES["glm4-9b"], gpu=a100)  # fits: no error
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(CourseError, match=r"bitsandbytes, which is not installed: run .*\[qlora\]"):
            check_device(PROFILES["glm4-9b-qlora"], gpu=a100)
    else:
        check_device(PROFILES["glm4-9b-qlora"], gpu=a100)


def test_preflight_checks_the_weights_and_the_output_dir(tiny_dir, tmp_path):
    assert preflight(get_profile("tiny"), tmp_path / "new", resume=False) is None
    rehearsal = dataclasses.replace(PROFILES["glm4-9b"], device="cpu", model_path=str(tmp_path / "no-weights"))
    with pytest.raises(CourseError, match="no-weights not found"):  # the CPU passes; the missing weights do not
        preflight(rehearsal)
