"""churnops: MLOps for customer-churn prediction."""

import os

# LightGBM and scikit-learn train on OpenMP threads, which by default spin while they wait for
# each other; when another process holds a core, the spinning thread starves the one doing the
# work and a 1-minute stage took 9-14 minutes. Passive waiting yields the core instead: 1.6x
# slower beside a competing process, not 3x or worse (bench/bench_training.py). It must be set
# before an OpenMP runtime loads, and importing churnops comes first; a value you set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Feast, when imported, sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client chooses how it
# keeps metric values (in process, or in shared files per metric name) when its `values` module
# is first imported. Importing it here, before Feast can be, keeps every server's metrics its
# own (two servers in one process otherwise add up each other's counts).
import prometheus_client.values  # noqa: F401

# Feast's import spends most of its seconds in typeguard re-compiling Feast's own modules; see
# churnops/_feast_import.py (nothing is imported until something imports Feast).
from churnops import _feast_import

_feast_import.install()
