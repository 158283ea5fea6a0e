"""The one CPU whose vector sorts need steering (see `prefer_avx2_sorts`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# NumPy's names for its AVX-512 dispatch targets: 2.4 groups them as X86_V4; earlier releases
# named each. NumPy ignores (with an ImportWarning) a name it does not dispatch on.
_AVX512_TARGETS = {
    True: "X86_V4 AVX512_ICL AVX512_SPR",
    False: "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR",
}


def is_zen4(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text describes AMD Zen 4: family 25 (0x19) with AVX-512.

    Zen 3 shares family 25 but has no AVX-512; Zen 5 (family 26) runs compress-stores at speed.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return (
        fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
        and "avx512f" in fields.get("flags", "").split()
    )


def _numpy_2_4_or_later() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("numpy").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (2, 4)


def prefer_avx2_sorts(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """On Zen 4, before NumPy loads, turn off its AVX-512 targets; returns what was set.

    Nothing is done when NumPy is already imported (it read its settings then), when
    NPY_DISABLE_CPU_FEATURES is set, or on any other CPU.
    """
    if "numpy" in sys.modules or "NPY_DISABLE_CPU_FEATURES" in os.environ:
        return None
    try:
        with cpuinfo.open(errors="replace") as lines:
            text = lines.read(16384)  # the first processor's block (a many-core file is large)
    except OSError:
        return None
    if not is_zen4(text):
        return None
    targets = _AVX512_TARGETS[_numpy_2_4_or_later()]
    os.environ["NPY_DISABLE_CPU_FEATURES"] = targets
    return targets
