"""polelink agent: cameras → vehicle counts → aggregates, on a street-light pole computer."""

__version__ = "0.1.0"

import os
from datetime import UTC, datetime

# Before numpy loads (this package is imported first by ``agent`` and ``python -m agent``):
# one OpenBLAS thread. The agent's matrices are a tracker's 8x8 Kalman steps, which gain
# nothing from BLAS threads, and an idle OpenBLAS thread spins: it burnt 80 % of a core of
# the 2-core dev machine in ``agent run`` (docs/developers/benchmarks.md). A value set
# outside (the unit file sets the same) is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

#: The day this version was built: a wall clock reading earlier than this is not plausible.
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
