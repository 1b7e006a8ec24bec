"""Regression: many kernels of a few shapes projected repeatedly must not hang.

With jaxlib 0.10's CPU LAPACK, several batched eigh calls in flight at once
deadlocked XLA's 2-thread pool within the first few calls of this loop.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # a subprocess

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, lrpet_jax
    rng = np.random.default_rng(0)
    shapes = ([(3, 3, 16, 16)] * 6 + [(3, 3, 16, 32)] + [(3, 3, 32, 32)] * 6
              + [(3, 3, 32, 64)] + [(3, 3, 64, 64)] * 6 + [(64, 10)])
    params = {f"l{i}": {"kernel": rng.standard_normal(s).astype(np.float32)}
              for i, s in enumerate(shapes)}
    ranks = lrpet_jax.uniform_ranks(params, 0.54)
    opt = lrpet_jax.low_rank_projection(ranks, every=1)
    state = opt.init(params)
    update = jax.jit(opt.update)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(100):
      jax.block_until_ready(update(zeros, state, params))
    print("finished")
""")


def test_repeated_projection_finishes():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, timeout=180, env=env, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "finished" in result.stdout
