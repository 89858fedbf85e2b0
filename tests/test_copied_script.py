"""The code cells of notebooks 03-05, copied one after the other into a plain Python script, fine-tune and chat.

That is what a learner takes home: nothing in it may depend on Jupyter, on a cell hidden elsewhere, or on
helpers beyond the profile, data loading, the checks, the tracking start and the #@save functions of 01 and 03.
"""

import ast
import json
import subprocess
import sys

from conftest import NOTEBOOKS

ALLOWED = {"get_profile", "load_alpaca", "check_rows", "in_test_split", "check_weights", "preflight", "check_adapter",
           "start_tracking", "load_model", "prepare_dataset", "to_messages"}


def script(overrides: dict) -> str:
    """The code cells of 03, 04 and 05 in order, each notebook's parameters followed by its overrides."""
    parts = []
    for name in ("03_dataset_formatting", "04_lora_sft", "05_adapter_chat"):
        for cell in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                parts.append("".join(cell["source"]))
                if "parameters" in cell["metadata"].get("tags", []):
                    parts.append("\n".join(f"{k} = {v!r}" for k, v in overrides.get(name[:2], {}).items()))
    return "\n\n".join(parts) + "\n"


def test_the_copied_cells_of_03_to_05_are_a_working_fine_tune(tmp_path, tiny_dir):
    adapter = tmp_path / "adapter"
    source = script({"03": {"PROFILE": "tiny"},
                     "04": {"PROFILE": "tiny", "OUTPUT_DIR": str(adapter), "MAX_STEPS": 30, "TRACKING": "disabled"},
                     "05": {"ADAPTER_DIR": str(adapter), "HELDOUT_LIMIT": 2, "CHAT_SCRIPT": ["你是谁？"]}})
    imported = {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("helpers") for a in node.names}
    assert imported <= ALLOWED, imported - ALLOWED
    path = tmp_path / "fine_tune.py"
    path.write_text(source, encoding="utf-8")
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={"MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                 "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "30 steps (planned 30)" in result.stdout and "GlmForCausalLM from adapter-merged" in result.stdout
    assert (adapter / "adapter_model.safetensors").is_file() and (tmp_path / "adapter-merged" / "model.safetensors").is_file()
