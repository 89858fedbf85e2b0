"""Recipes: YAML files in configs/ in the libraries' own field names, and the one function that says where they fit."""

import dataclasses

import pytest
import yaml

from helpers import CourseError
from helpers.families import GLM4
from helpers.machine import choose, estimate, fits, get_recipe
from helpers.recipes import CourseArguments, Recipe, read_recipe, recipe_names


def test_the_recipes_are_plain_yaml_files_in_the_libraries_field_names():
    from trl import ModelConfig, SFTConfig

    assert recipe_names() == ["glm4-9b", "glm4-9b-qlora", "tiny"]
    fields = {f.name for dtype in (SFTConfig, ModelConfig, CourseArguments) for f in dataclasses.fields(dtype)}
    for name in recipe_names():
        values = yaml.safe_load(open(f"configs/{name}.yaml", encoding="utf-8"))
        assert set(values) <= fields, set(values) - fields  # nothing renamed, nothing invented
        assert set(values["lora_target_modules"]) <= set(GLM4.lora_targets)
        assert values["assistant_only_loss"] is True and values["chat_template_path"] == "helpers/glm4_training_template.jinja"


def test_9b_recipe_follows_the_original_tutorial():
    r = read_recipe("glm4-9b")
    assert (r["lora_r"], r["lora_alpha"], r["lora_dropout"]) == (8, 32, 0.1)
    assert r["lora_target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert (r["learning_rate"], r["per_device_train_batch_size"], r["max_length"], r["num_train_epochs"]) == (5e-4, 2, 512, 3)
    assert (r["dtype"], r.device, r["bf16"], r["packing"]) == ("bfloat16", "cuda", True, True)
    assert r["model_name_or_path"] == "weights/glm-4-9b-hf" and r["chat_model_path"] == "weights/glm-4-9b-chat-hf"


def test_qlora_recipe_is_the_9b_recipe_on_4bit_weights():
    base, qlora = read_recipe("glm4-9b"), read_recipe("glm4-9b-qlora")
    assert qlora["load_in_4bit"] and qlora["bnb_4bit_quant_type"] == "nf4" and qlora["use_bnb_nested_quant"]
    own = {"load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "output_dir"}
    assert {k: v for k, v in qlora.items() if k not in own} == {k: v for k, v in base.items() if k not in own}


def test_tiny_recipe_runs_on_cpu_in_fp32():
    r = read_recipe("tiny")
    assert (r["dtype"], r.device, r.chat_model_dir, r["bf16"]) == ("float32", "cpu", None, False)
    assert r.model_dir.name == "tiny-glm4" and r["activation_checkpointing"] is False


T4 = {"name": "Tesla T4", "bf16": False, "total_gb": 15.8}
CARD_16GB = {"name": "RTX 4060 Ti 16GB", "bf16": True, "total_gb": 17.2}  # a "16 GB" card: 17.2e9 bytes
CARD_24GB = {"name": "RTX 4090", "bf16": True, "total_gb": 25.4}
CARD_80GB = {"name": "A100 80GB", "bf16": True, "total_gb": 85.1}
CARD_8GB = {"name": "RTX 3070", "bf16": True, "total_gb": 8.6}


@pytest.mark.parametrize("gpu,bitsandbytes,weights,chosen,reason", [
    (None, True, True, "tiny", "recipe glm4-9b-qlora needs a CUDA GPU and none was found"),
    (T4, True, True, "tiny", "Tesla T4 has no bf16, and the course trains GLM-4 in bf16 only"),
    (CARD_80GB, True, False, "tiny", "weights/glm-4-9b-hf not found: download it with `python -m helpers.download glm4-9b`"),
    (CARD_16GB, True, False, "tiny", "not found"),
    (CARD_80GB, True, True, "glm4-9b", "enough for glm4-9b"),
    (CARD_80GB, False, True, "glm4-9b", "enough for glm4-9b"),
    (CARD_24GB, False, True, "glm4-9b", "enough for glm4-9b (about 22 GB)"),
    (CARD_16GB, True, True, "glm4-9b-qlora", "enough for glm4-9b-qlora (about 10 GB)"),
    (CARD_16GB, False, True, "tiny", "bitsandbytes, which is not installed: run `pip install -e \".[qlora]\"`"),
    (CARD_8GB, True, True, "tiny", "needs about 10 GB of GPU memory but this GPU has 9 GB: use a larger GPU"),
])
def test_auto_chooses_for_a_described_machine_and_says_why(gpu, bitsandbytes, weights, chosen, reason, monkeypatch):
    real = Recipe.weights_present
    monkeypatch.setattr(Recipe, "weights_present", lambda r: weights if r.device == "cuda" else real(r))
    recipe, why = choose({"gpu": gpu, "bitsandbytes": bitsandbytes})
    assert recipe.name == chosen and reason in why and "\n" not in why


@pytest.mark.parametrize("gpu,message", [
    (None, 'needs a CUDA GPU and none was found: use the tiny recipe (RECIPE = "tiny"; --config configs/tiny.yaml)'),
    (T4, "Tesla T4 has no bf16, and the course trains GLM-4 in bf16 only (fp16 gives nan losses, zai-org/GLM-4 issue 96)"),
    ({"name": "RTX A4000", "bf16": True, "total_gb": 17.2}, "needs about 22 GB of GPU memory but this GPU has 17 GB: "
                                                            "use recipe glm4-9b-qlora (about 10 GB)"),
    (CARD_8GB, "use a larger GPU, several GPUs with configs/accelerate/zero3.yaml"),
])
def test_fits_refuses_a_gpu_that_cannot_train_the_9b_in_one_sentence(gpu, message):
    reason = fits(read_recipe("glm4-9b"), {"gpu": gpu, "bitsandbytes": True})
    assert message in reason and "\n" not in reason


def test_fits_passes_a_fitting_gpu_and_4bit_needs_bitsandbytes():
    a100 = {"gpu": CARD_80GB, "bitsandbytes": False}
    assert fits(read_recipe("glm4-9b"), a100) is None and fits(read_recipe("tiny"), a100) is None
    assert "bitsandbytes, which is not installed" in fits(read_recipe("glm4-9b-qlora"), a100)
    assert fits(read_recipe("glm4-9b-qlora"), {**a100, "bitsandbytes": True}) is None
    assert fits(read_recipe("tiny"), {"gpu": None, "bitsandbytes": False}) is None  # the CPU recipe runs anywhere


MEASURED_GB = 21_531 * 1024**2 / 1e9  # GLM-4's fine-tune README: bf16 LoRA at 21,531 MiB = 22.58 GB (conditions unstated)


def test_bf16_lora_estimate_is_near_the_readmes_21531_mib():
    est = estimate(read_recipe("glm4-9b"))
    assert est["weights"] == pytest.approx(18.8, abs=0.1)  # 9.4B parameters x 2 bytes, decimal GB
    assert est["total"] == pytest.approx(MEASURED_GB, rel=0.05)
    assert round((est["total"] - MEASURED_GB) / MEASURED_GB * 100) == -2  # the figure README and notebook 04 give
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"), abs=0.05)


def test_qlora_estimate_fits_a_16_gb_card_and_tiny_uses_its_own_config(tiny_dir):
    qlora = estimate(read_recipe("glm4-9b-qlora"))
    assert 5 < qlora["weights"] < 8 and qlora["total"] <= 12
    tiny = estimate(read_recipe("tiny"))
    assert tiny["weights"] < 0.02 and tiny["cuda context + allocator"] == 0.0


def test_read_recipe_applies_changes_and_refuses_unknown_names(tmp_path):
    r = read_recipe("tiny", max_steps=7, learning_rate=1e-3)
    assert (r["max_steps"], r["learning_rate"], r.name) == (7, 1e-3, "tiny")
    assert "max_steps" not in read_recipe("tiny")  # the file stays as it was
    with pytest.raises(CourseError, match="unknown recipe 'glm5'.*auto, glm4-9b, glm4-9b-qlora, tiny"):
        read_recipe("glm5")
    (tmp_path / "list.yaml").write_text("- max_steps\n")
    with pytest.raises(CourseError, match="must be a YAML mapping"):
        read_recipe(tmp_path / "list.yaml")


def test_get_recipe_auto_prints_its_choice(capsys):
    name = get_recipe("auto").name
    assert capsys.readouterr().out.startswith(f"recipe: {name} (")


def test_a_recipe_saved_beside_an_adapter_loads_back(tmp_path):
    recipe = read_recipe("tiny", lora_r=4)
    recipe.save(tmp_path)
    loaded = Recipe.load(tmp_path)
    assert loaded == recipe and loaded.name == "tiny" and Recipe.load(tmp_path / "nothing") is None


def literal_cells():
    """Notebook 04's cells that write the run's values as literals: its LoraConfig cell and its SFTConfig cell."""
    import json

    from helpers import REPO_ROOT

    cells = ["".join(c["source"]) for c in json.loads((REPO_ROOT / "notebooks/04_lora_sft.ipynb").read_text("utf-8"))["cells"]
             if c["cell_type"] == "code"]
    return [next(c for c in cells if "peft_config = LoraConfig(" in c), next(c for c in cells if "SFTConfig(" in c
                                                                              and "training_args =" in c)]


@pytest.mark.parametrize("name", ["tiny", "glm4-9b", "glm4-9b-qlora"])
def test_notebook_04s_literal_values_are_the_recipe_files(name):
    """The notebook writes each recipe's values as literals a learner can edit; they cannot drift from configs/."""
    from peft import LoraConfig

    recipe = read_recipe(name)
    captured = {}
    namespace = {"recipe": recipe, "LoraConfig": LoraConfig, "SFTConfig": lambda **kw: captured.update(kw) or kw,
                 "output_dir": recipe.output_path, "report_to": "none", "MAX_STEPS": None,
                 "print": lambda *a, **k: None, "len": len, "sorted": sorted}
    lora_cell, sft_cell = literal_cells()
    exec(lora_cell, namespace)
    exec(sft_cell.split("\nprint(")[0], namespace)  # its last line prints the result
    peft_config = namespace["peft_config"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (
        recipe["lora_r"], recipe["lora_alpha"], recipe["lora_dropout"])
    assert sorted(peft_config.target_modules) == sorted(recipe["lora_target_modules"])
    training = {k: v for k, v in recipe.items() if k in captured}
    assert {k: captured[k] for k in training} == {**training, "output_dir": str(recipe.output_path),
                                                   "chat_template_path": str(recipe.path("chat_template_path"))}
    unset = [k for k in recipe if k not in captured and k not in dataclasses.asdict(CourseArguments())
             and not k.startswith(("lora_", "use_peft", "model_name_or_path", "load_in_4bit", "bnb_", "use_bnb"))]
    assert unset == ["dtype"] and captured["model_init_kwargs"] == {"dtype": recipe["dtype"]}  # TRL loads it so
