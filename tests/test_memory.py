"""The memory estimate behind "this GPU fits profile X", checked against GLM-4's published figure."""

import pytest

from helpers.memory import estimate
from helpers.profiles import PROFILES, fitting_profile

MEASURED_GB = 21_531 * 1024**2 / 1e9  # GLM-4's authors: bf16 LoRA peaked at 21,531 MiB = 22.58 GB = 21.03 GiB


def test_bf16_lora_estimate_is_near_the_measured_21531_mib():
    est = estimate(PROFILES["glm4-9b"])
    assert est["weights"] == pytest.approx(18.8, abs=0.1)  # 9.4B parameters x 2 bytes, decimal GB
    assert est["total"] == pytest.approx(MEASURED_GB, rel=0.05)
    assert round((est["total"] - MEASURED_GB) / MEASURED_GB * 100) == -2  # the figure README and notebook 04 give
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"), abs=0.05)


def test_qlora_fits_a_16_gb_card_and_bf16_does_not():
    qlora = estimate(PROFILES["glm4-9b-qlora"])
    assert 5 < qlora["weights"] < 8 and qlora["total"] <= 12
    assert fitting_profile(25.8).name == "glm4-9b"  # a "24 GB" card reports about 25.8e9 bytes
    assert fitting_profile(17.2).name == "glm4-9b-qlora"  # a "16 GB" card
    assert fitting_profile(8.0) is None and fitting_profile(80.0, bf16=False) is None


def test_tiny_estimate_uses_its_own_config(tiny_dir):
    est = estimate(PROFILES["tiny"])
    assert est["weights"] < 0.02 and est["cuda context + allocator"] == 0.0
