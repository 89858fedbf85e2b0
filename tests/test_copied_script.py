"""The code cells of notebooks 03-05, copied one after the other into a plain Python script, fine-tune and chat.

That is what a learner takes home: nothing in it may depend on Jupyter, on a cell hidden elsewhere, or on
helpers beyond the recipe, data loading and the data's paths, the checks, the tracking start, GLM-4's family entry and the #@save
functions of 01 and 03.
The script also carries a learner's edits (notebook 04's exercise 2: another rank and learning rate, typed into
the cells) and, after notebook 05's merge, runs an earlier step again, as "Run All" and then a re-run would.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import NOTEBOOKS

pytestmark = pytest.mark.slow

ALLOWED = {"get_recipe", "GLM4", "load_alpaca", "check_rows", "in_test_split", "check_weights", "preflight", "check_adapter",
           "start_tracking", "load_model", "prepare_dataset", "to_messages",
           "IDENTITY", "EVAL_DIR"}  # where the course's identity rows and the evaluation sets written apart lie
EDITS = {"04": [("LoraConfig(r=16,", "LoraConfig(r=4,"), ("learning_rate=3e-3,", "learning_rate=1e-3,")]}
RERUN = """
rerun = reply(model, tokenizer, [{"role": "user", "content": FIXED_PROMPTS[0]}], max_new_tokens)
with model.disable_adapter():
    base_again = reply(model, tokenizer, [{"role": "user", "content": FIXED_PROMPTS[0]}], max_new_tokens)
print("RERUN", json.dumps({"same_after_merge": rerun[0][:120] == rows[0]["fine-tuned"],
                           "base_same_after_merge": base_again[0][:120] == rows[0]["base"]}))
"""


def script(overrides: dict) -> str:
    """The code cells of 03, 04 and 05 in order (solutions left out), each notebook's parameters followed by its
    overrides and its cells edited as EDITS says."""
    parts = []
    for name in ("03_dataset_formatting", "04_lora_sft", "05_adapter_chat"):
        for cell in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code" and "solution" not in cell["metadata"].get("tags", []):
                source = "".join(cell["source"])
                for old, new in EDITS.get(name[:2], []):
                    source = source.replace(old, new)
                parts.append(source)
                if "parameters" in cell["metadata"].get("tags", []):
                    parts.append("\n".join(f"{k} = {v!r}" for k, v in overrides.get(name[:2], {}).items()))
    return "\n\n".join(parts) + "\n" + RERUN


def test_the_copied_cells_of_03_to_05_are_a_working_fine_tune(tmp_path, tiny_dir):
    adapter = tmp_path / "adapter"
    source = script({"03": {"RECIPE": "tiny"},
                     "04": {"RECIPE": "tiny", "OUTPUT_DIR": str(adapter), "MAX_STEPS": 6, "TRACKING": "disabled"},
                     "05": {"ADAPTER_DIR": str(adapter), "HELDOUT_LIMIT": 1, "CHAT_SCRIPT": ["你是谁？"],
                            "MAX_NEW_TOKENS": 24}})
    for old, new in EDITS["04"]:
        assert source.count(new) == 1, f"{old!r} is no longer in notebook 04"
    imported = {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("helpers") for a in node.names}
    assert imported <= ALLOWED, imported - ALLOWED
    path = tmp_path / "fine_tune.py"
    path.write_text(source, encoding="utf-8")
    env = {"MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}  # a plain terminal's, not the test run's
    if "OMP_NUM_THREADS" in os.environ:  # under make test, one thread like every command of its worker (conftest)
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    result = subprocess.run([sys.executable, str(path)], cwd=NOTEBOOKS, capture_output=True, text=True, timeout=900,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "6 steps (planned 6)" in out and "GlmForCausalLM from adapter-merged" in out
    assert (adapter / "adapter_model.safetensors").is_file() and (tmp_path / "adapter-merged" / "model.safetensors").is_file()
    # the learner's numbers were used, and step 6 says how they differ and how to run the same on the command line
    assert json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"] == 4
    assert "你的 lora_r=4，配方文件 lora_r=16" in out and "你的 learning_rate=0.001，配方文件 learning_rate=0.003" in out
    assert "--config configs/tiny.yaml" in out and "--lora_r 4" in out and "--learning_rate 0.001" in out
    assert "--max_steps 6" in out
    # after the merge, step 5 runs again: the model still has its adapter, and still answers as before
    rerun = json.loads(out.split("RERUN ", 1)[1].splitlines()[0])
    assert rerun == {"same_after_merge": True, "base_same_after_merge": True}
