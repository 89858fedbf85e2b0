"""Loading models as a recipe says, and the checks that run before: machine, weights, tokenizer, template."""

import shutil

import pytest
import torch

from helpers import CourseError
from helpers.checks import check_machine, check_weights, missing_error, preflight
from helpers.models import load_model
from helpers.recipes import read_recipe


def test_load_model_gives_the_base_model_in_eval_mode(tiny_dir):
    model = load_model(read_recipe("tiny"))
    assert type(model).__name__ == "GlmForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert list(model.generation_config.eos_token_id) == [3000, 3007, 3009]  # GLM-4's three end ids, tiny's ids


def test_load_model_loads_another_directory_in_the_recipes_dtype(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "copy")
    model = load_model(read_recipe("tiny", dtype="bfloat16"), tmp_path / "copy")
    assert model.dtype == torch.bfloat16


def test_missing_weights_say_how_to_get_them(tmp_path):
    assert str(missing_error(read_recipe("tiny").model_dir)) == "weights/tiny-glm4 not found: build it with `make tiny`."
    msg = str(missing_error(read_recipe("glm4-9b").model_dir))
    assert msg.startswith("weights/glm-4-9b-hf not found: download it with `python -m helpers.download glm4-9b`")
    assert 'RECIPE = "tiny"' in msg and "\n" not in msg
    with pytest.raises(CourseError, match="not found: check the path"):
        check_weights(read_recipe("tiny"), tmp_path / "nothing")


def test_a_model_directory_without_tokenizer_or_template_is_refused(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(CourseError, match="has no tokenizer"):
        check_weights(read_recipe("tiny"), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja, like some base checkpoints
        shutil.copy(tiny_dir / name, tmp_path / name)
    with pytest.raises(CourseError, match="has no chat template: run `python -m helpers.download glm4-9b`"):
        check_weights(read_recipe("tiny"), tmp_path)
    assert check_weights(read_recipe("tiny")) == read_recipe("tiny").model_dir


def test_check_machine_refuses_what_fits_says_in_one_sentence():
    with pytest.raises(CourseError) as err:
        check_machine(read_recipe("glm4-9b"), {"gpu": None, "bitsandbytes": True})
    assert str(err.value).endswith('to run on the CPU.') and "\n" not in str(err.value)
    check_machine(read_recipe("tiny"), {"gpu": None, "bitsandbytes": False})  # fits: no error


def test_preflight_checks_the_weights_and_the_output_dir(tiny_dir, tmp_path):
    assert preflight(read_recipe("tiny"), tmp_path / "new", resume=False) is None
    rehearsal = read_recipe("glm4-9b", use_cpu=True, model_name_or_path=str(tmp_path / "no-weights"))
    with pytest.raises(CourseError, match="no-weights not found"):  # the CPU passes; the missing weights do not
        preflight(rehearsal)
