"""The benchmark scripts run from the README's commands and report what they promise (no timing is asserted)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # each trains a few steps

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, whatever this machine has


def run_script(*args, timeout=600):
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                            env=NO_GPU)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_train_throughput_compares_the_recipes_on_the_same_tokens(tmp_path, tiny_dir):
    line = run_script("benchmarks/train_throughput.py", "--tokens", "1000", "--layers", "1", "--hidden", "128",
                      "--work", str(tmp_path))
    recipes = line["recipes"]
    assert set(recipes) == {"original", "padding-free", "packed"}
    assert len({r["real_tokens"] for r in recipes.values()}) == 1  # the same examples for every recipe
    assert recipes["packed"]["steps"] <= recipes["original"]["steps"]  # whole examples share rows
    assert all(r["real_tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in recipes.values())
    assert line["speedup_vs_original"]["original"] == 1.0


def test_gpu_benchmark_runs_on_the_cpu_with_a_tiny_config(tmp_path):
    out = tmp_path / "gpu_lora.json"
    line = run_script("benchmarks/gpu_lora.py", "--tiny", "--steps", "1", "--warmup", "1", "--examples-tokens", "1500",
                      "--out", str(out))
    assert json.loads(out.read_text()) == line and line["shape"] == "tiny"
    recipes = line["recipes"]
    n = line["matmul_parameters"]
    assert recipes["original"]["flops_per_token"] == 4 * n and recipes["packed"]["flops_per_token"] == 6 * n
    assert recipes["packed-no-gc"]["gradient_checkpointing"] is False and recipes["packed"]["gradient_checkpointing"]
    for name in ("original", "packed", "packed-no-gc"):
        assert recipes[name]["real_tokens_per_s"] > 0 and recipes[name]["attention"] == "sdpa"
    if importlib.util.find_spec("bitsandbytes") is None:  # the qlora extra is not installed: said, not failed
        assert recipes["qlora"] == {"skipped": 'bitsandbytes is not installed (pip install -e ".[qlora]")'}
    else:  # bitsandbytes runs 4-bit on the CPU too: the recipe must train
        assert recipes["qlora"]["real_tokens_per_s"] > 0 and recipes["qlora"]["gradient_checkpointing"] is True


def test_gpu_benchmark_refuses_the_9b_shape_without_a_gpu():
    result = subprocess.run([sys.executable, "benchmarks/gpu_lora.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=NO_GPU)
    assert result.returncode != 0 and "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_identity_probe_separates_the_questions_on_the_base(random_adapter, tmp_path):
    """The probe is fit on training prompts and scored on data/eval/; the tiny base alone already ranks identity
    questions above other tasks (a probe that learned nothing scores an AUC near 0.5). With the adapter's greedy
    answers beside it (fine_tune_quality.py's quality.json), it counts the general tasks answered with the identity."""
    adapter = tmp_path / "adapter"
    shutil.copytree(random_adapter, adapter)
    lines = (REPO_ROOT / "data/eval/general_zh.jsonl").read_text(encoding="utf-8").splitlines()
    general = [json.loads(line)["prompt"] for line in lines[:24]]
    answers = [{"prompt": p, "kind": "general", "claims": i in (0, 5, 7)} for i, p in enumerate(general)]
    (adapter / "quality.json").write_text(json.dumps({"answers": {"prompts": {"answers": answers}}}), encoding="utf-8")
    line = run_script("benchmarks/identity_probe.py", "--adapter", str(adapter), "--limit", "24")
    assert line["train"] == [24, 24] and line["test"] == [24, 24]
    for name in ("base", "fine-tuned"):
        assert set(line[name]) == {"auc", "d_prime", "found_at_5pct"} and 0 <= line[name]["found_at_5pct"] <= 1
    assert line["base"]["auc"] > 0.65 and line["base"]["d_prime"] > 0.5  # 0.74 and 0.91 here, on 24 of each
    assert line["leaked"] == 3 and 0 <= line["leaked_above_threshold"] <= 3


def test_identity_probe_refuses_a_missing_adapter_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/identity_probe.py", "--adapter", str(tmp_path / "nothing")],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=NO_GPU)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
