"""The memory estimate behind "this GPU fits profile X", checked against GLM-4's published figure."""

import pytest

from helpers import CourseError
from helpers.memory import check_fits, estimate, fitting_profile
from helpers.profiles import PROFILES


def test_bf16_lora_estimate_is_near_the_measured_21_5_gb():
    est = estimate(PROFILES["glm4-9b"])
    assert est["weights"] == pytest.approx(18.8, abs=0.1)  # 9.4B parameters x 2 bytes
    assert est["total"] == pytest.approx(21.5, rel=0.08)
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"), abs=0.05)


def test_qlora_fits_a_16_gb_card_and_bf16_does_not():
    qlora = estimate(PROFILES["glm4-9b-qlora"])
    assert 5 < qlora["weights"] < 8 and qlora["total"] <= 12
    assert fitting_profile(25.8).name == "glm4-9b"  # a "24 GB" card reports about 25.8e9 bytes
    assert fitting_profile(17.2).name == "glm4-9b-qlora"  # a "16 GB" card
    assert fitting_profile(8.0) is None and fitting_profile(80.0, bf16=False) is None


def test_too_small_a_gpu_is_refused_naming_the_profile_that_fits():
    with pytest.raises(CourseError, match=r"needs about 22 GB .* has 17 GB: use --profile glm4-9b-qlora"):
        check_fits(PROFILES["glm4-9b"], 17.2)
    with pytest.raises(CourseError, match="use a larger GPU"):
        check_fits(PROFILES["glm4-9b-qlora"], 8.0)
    check_fits(PROFILES["glm4-9b"], 80.0)  # fits: no error


def test_tiny_estimate_uses_its_own_config(tiny_dir):
    est = estimate(PROFILES["tiny"])
    assert est["weights"] < 0.02 and est["cuda context + allocator"] == 0.0
