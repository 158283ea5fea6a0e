"""churnops: MLOps for customer-churn prediction."""

import os

# Feast, when imported, sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client chooses how it
# keeps metric values (in process, or in shared files per metric name) when its `values` module
# is first imported. Importing it here, before Feast can be, keeps every server's metrics its
# own (two servers in one process otherwise add up each other's counts).
import prometheus_client.values  # noqa: F401

# Feast's import spends most of its seconds in typeguard re-compiling Feast's own modules; see
# churnops/_feast_import.py (nothing is imported until something imports Feast).
from churnops import _cpu, _feast_import

# LightGBM and scikit-learn train on OpenMP threads, which by default spin while they wait for
# each other; when another process holds a core, the spinning thread starves the one doing the
# work and a 1-minute stage took 9-14 minutes. Passive waiting yields the core instead: 1.6x
# slower beside a competing process, not 3x or worse (bench/bench_training.py). It must be set
# before an OpenMP runtime loads, and importing churnops comes first; a value you set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# AMD Zen 4 runs AVX-512's compress-to-memory in microcode, and NumPy's AVX-512 sorts are built
# on it: sorting 10M 32-bit keys took 0.40 s there against 0.06 s with NumPy's AVX2 sorts, and
# the feature engine sorts keys to count distinct products and order days. So on Zen 4 NumPy's
# AVX-512 code paths are turned off, which NumPy reads once, when it is first imported. A
# NPY_DISABLE_CPU_FEATURES you set wins.
_cpu.prefer_avx2_sorts()

_feast_import.install()
