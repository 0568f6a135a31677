"""The fit's one-thread limit holds for the thread pools scikit-learn really runs on.

Each check runs in a fresh interpreter, where scikit-learn (and its OpenMP runtime) is not
loaded yet: the state of a single-file ``colorquant`` call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from colorquant.options import FitMethod

#: Records, at every scikit-learn k-means step, the OpenMP thread count that step was given
#: and what threadpoolctl reports of every loaded BLAS and OpenMP pool at that moment.
PROBE = """
import json, sys
import numpy as np
from threadpoolctl import threadpool_info
from colorquant import fit
from colorquant.colorspace import RGBSpace
from colorquant.options import FitMethod

STEPS = {"_kmeans_single_lloyd", "_mini_batch_step"}
seen = []

def probe(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name in STEPS and "sklearn" in code.co_filename:
        pools = [[p["user_api"], p["prefix"], p["num_threads"]] for p in threadpool_info()]
        seen.append([code.co_name, frame.f_locals.get("n_threads"), pools])

assert "sklearn" not in sys.modules
rng = np.random.default_rng(0)
colors = np.unique(rng.integers(0, 256, (3000, 3), dtype=np.uint8), axis=0)
counts = rng.integers(1, 30, len(colors))
sys.setprofile(probe)
fit.fit_centers(colors, counts, 8, seed=0, space=RGBSpace(), method=FitMethod[sys.argv[1]])
sys.setprofile(None)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("method", [m.name for m in FitMethod])
def test_every_pool_runs_one_thread_during_the_kmeans(method):
    # No thread-count variables: the limit itself must hold.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", PROBE, method], capture_output=True,
                          text=True, check=True, env=env)
    steps = json.loads(proc.stdout)
    names = {name for name, _, _ in steps}
    assert "_kmeans_single_lloyd" in names  # the Lloyd polish / fit was seen
    if method == "MINIBATCH":
        assert "_mini_batch_step" in names
    for name, n_threads, pools in steps:
        assert n_threads == 1, (name, n_threads)
        assert any(api == "openmp" for api, _, _ in pools), pools  # sklearn's libgomp
        assert any(api == "blas" for api, _, _ in pools), pools
        assert all(threads == 1 for _, _, threads in pools), (name, pools)
