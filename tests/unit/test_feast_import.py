"""Feast is imported without typeguard instrumenting its functions; other code keeps its checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = """
import sys
import churnops
assert "typeguard" not in sys.modules  # nothing is paid until Feast is imported
from feast import Entity, FeatureView
import typeguard

def instrumented(function):
    return "check_argument_types_internal" in function.__code__.co_names

@typeguard.typechecked
def mine(x: int) -> int:
    return x

assert instrumented(mine)  # the probe can tell: a function of ours is instrumented
try:
    mine("text")
except typeguard.TypeCheckError:
    pass
else:
    raise AssertionError("typeguard stopped checking code outside Feast")
assert not instrumented(FeatureView.__init__)
assert not instrumented(Entity.__init__)
print("ok")
"""


def test_feast_is_not_instrumented_and_everything_else_still_is(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
