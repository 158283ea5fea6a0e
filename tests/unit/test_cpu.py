"""NumPy's AVX-512 sorts are steered away from on AMD Zen 4, and nowhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from churnops import _cpu

ZEN4 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
    "flags\t\t: fpu sse2 avx2 avx512f avx512bw\n\n"
)
ZEN3 = ZEN4.replace(" avx512f avx512bw", "")
ZEN5 = ZEN4.replace("cpu family\t: 25", "cpu family\t: 26")
INTEL = ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("cpu family\t: 25", "cpu family\t: 6")


def test_only_zen4_is_recognised() -> None:
    assert _cpu.is_zen4(ZEN4)
    assert not _cpu.is_zen4(ZEN3)
    assert not _cpu.is_zen4(ZEN5)
    assert not _cpu.is_zen4(INTEL)
    assert not _cpu.is_zen4("")
    # only the first processor's block is read
    assert not _cpu.is_zen4(INTEL + ZEN4)


def test_the_setting_is_made_before_numpy_and_never_over_yours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zen4, intel = tmp_path / "zen4", tmp_path / "intel"
    zen4.write_text(ZEN4)
    intel.write_text(INTEL)
    monkeypatch.delenv("NPY_DISABLE_CPU_FEATURES", raising=False)
    import numpy  # noqa: F401

    assert _cpu.prefer_avx2_sorts(zen4) is None  # NumPy is loaded in this process: too late
    monkeypatch.delitem(sys.modules, "numpy")  # (nothing below imports it)
    assert _cpu.prefer_avx2_sorts(intel) is None
    assert "NPY_DISABLE_CPU_FEATURES" not in os.environ
    assert _cpu.prefer_avx2_sorts(tmp_path / "missing") is None
    set_to = _cpu.prefer_avx2_sorts(zen4)
    assert set_to is not None
    assert "X86_V4" in set_to  # this environment's NumPy is 2.4 or later
    assert os.environ["NPY_DISABLE_CPU_FEATURES"] == set_to
    monkeypatch.setenv("NPY_DISABLE_CPU_FEATURES", "AVX512_SPR")
    assert _cpu.prefer_avx2_sorts(zen4) is None
    assert os.environ["NPY_DISABLE_CPU_FEATURES"] == "AVX512_SPR"


def test_numpy_loaded_after_churnops_runs_its_avx2_paths_on_this_machine_only_if_zen4() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    code = (
        "import churnops, numpy\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
        "import os\n"
        "print(f['X86_V4'], f['AVX2'], os.environ.get('NPY_DISABLE_CPU_FEATURES', '-').replace(' ', ','))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    x86_v4, avx2, disabled = done.stdout.split()
    if _cpu.is_zen4(Path("/proc/cpuinfo").read_text(errors="replace")):
        assert (x86_v4, avx2, disabled) == ("False", "True", "X86_V4,AVX512_ICL,AVX512_SPR")
    else:
        assert disabled == "-"  # elsewhere NumPy keeps whatever the machine has
