"""Properties of the projection P = project_kernel (energy transfer on,
rho = 0), over kernels drawn by hypothesis, checked against a float64 NumPy
SVD where a reference value is needed.

Kernels are drawn with a known spectrum whose kept values are separated from
the truncated ones (ratio >= 1/0.7), so the top-r subspace is well defined;
otherwise P(cW) = cP(W) and the orthogonal equivariance hold only up to the
choice among equal singular values.
"""

import hypothesis
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np

import lrpet_jax
from reference import matrix_with_spectrum, reference_projection, rel_err

# (kernel shape, rank): conv and dense, tall and wide.
CASES = [((3, 3, 4, 8), 3), ((3, 3, 2, 16), 5), ((1, 1, 6, 12), 2),
         ((12, 5), 2), ((5, 12), 4), ((3, 3, 3, 16), 7)]
TOL = 2e-4  # float32 Gram eigendecomposition against float64 SVD

settings = hypothesis.settings(max_examples=20, deadline=None,
                               derandomize=True)


@st.composite
def kernels(draw, low_rank=False):
  """(float32 kernel, rank) with a spectrum separated at the rank."""
  shape, rank = draw(st.sampled_from(CASES))
  m, n = int(np.prod(shape[:-1])), shape[-1]
  k = min(m, n)
  kept = sorted(draw(st.lists(st.floats(-1.0, 1.0), min_size=rank,
                              max_size=rank)), reverse=True)
  kept = [10.0 ** e for e in kept]
  tail_size = draw(st.integers(0, rank)) if low_rank else k - rank
  if low_rank:  # rank <= r already: fewer nonzero singular values
    kept = kept[:max(1, tail_size)]
    tail = []
  else:
    tail = sorted(draw(st.lists(st.floats(0.0, 0.7), min_size=tail_size,
                                max_size=tail_size)), reverse=True)
    tail = [t * kept[-1] for t in tail]
  seed = draw(st.integers(0, 2**31 - 1))
  w = matrix_with_spectrum(np.random.default_rng(seed), m, n, kept + tail)
  return w.reshape(shape), rank


def project(kernel, rank):
  return np.asarray(lrpet_jax.project_kernel(jnp.asarray(kernel), rank),
                    np.float64)


def singular_values(kernel):
  kernel = np.asarray(kernel, np.float64)
  return np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)


@settings
@hypothesis.given(kernels())
def test_matches_reference_and_has_rank_at_most_r(case):
  w, r = case
  p = project(w, r)
  assert rel_err(p, reference_projection(w, r)) <= TOL
  s = singular_values(p)
  assert np.all(s[r:] <= 1e-5 * s[0])


@settings
@hypothesis.given(kernels())
def test_idempotent(case):
  w, r = case
  p = project(w, r)
  assert rel_err(project(p.astype(np.float32), r), p) <= TOL


@settings
@hypothesis.given(kernels())
def test_energy_transfer_keeps_the_frobenius_norm(case):
  w, r = case
  np.testing.assert_allclose(np.linalg.norm(project(w, r)),
                             np.linalg.norm(np.asarray(w, np.float64)),
                             rtol=1e-5)


@settings
@hypothesis.given(kernels(),
                  st.sampled_from([-3.0, -1.0, 0.25, 2.0, 50.0]))
def test_homogeneous(case, c):
  w, r = case
  assert rel_err(project(np.float32(c) * w, r), c * project(w, r)) <= TOL


@settings
@hypothesis.given(kernels(), st.integers(0, 2**31 - 1))
def test_orthogonal_equivariance(case, seed):
  # P(QW) = QP(W) for Q orthogonal on the input side (kh*kw*c_in rows), and
  # P(WQ') = P(W)Q' on the output side.
  w, r = case
  m, n = int(np.prod(w.shape[:-1])), w.shape[-1]
  rng = np.random.default_rng(seed)
  q = np.linalg.qr(rng.standard_normal((m, m)))[0]
  q_out = np.linalg.qr(rng.standard_normal((n, n)))[0]
  mat = np.asarray(w, np.float64).reshape(m, n)
  p = project(w, r).reshape(m, n)
  left = project((q @ mat).astype(np.float32).reshape(w.shape), r)
  assert rel_err(left.reshape(m, n), q @ p) <= TOL
  right = project((mat @ q_out).astype(np.float32).reshape(w.shape), r)
  assert rel_err(right.reshape(m, n), p @ q_out) <= TOL


@settings
@hypothesis.given(kernels(low_rank=True))
def test_kernels_of_rank_at_most_r_are_fixed_points(case):
  w, r = case
  assert rel_err(project(w, r), w) <= TOL
