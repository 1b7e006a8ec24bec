"""project_kernel / project_params against a float64 NumPy SVD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from reference import matrix_with_spectrum, reference_projection, rel_err

SHAPES = [
    (3, 3, 16, 32),   # conv, m = 144 > n
    (3, 3, 3, 16),    # first conv of a CIFAR ResNet
    (1, 1, 16, 64),   # 1x1 conv with m < n (wide)
    (64, 10),         # dense head
    (10, 48),         # wide dense
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("energy_transfer", [True, False])
@pytest.mark.parametrize("residual_scale", [0.0, 0.3])
@pytest.mark.parametrize("with_out_scale", [False, True])
def test_matches_float64_svd(shape, energy_transfer, residual_scale,
                             with_out_scale):
  rng = np.random.default_rng(hash((shape, energy_transfer)) % 2**32)
  kernel = rng.standard_normal(shape).astype(np.float32)
  n = min(int(np.prod(shape[:-1])), shape[-1])
  rank = max(1, int(n - n * 0.54))
  out_scale = (rng.uniform(0.2, 3.0, shape[-1]).astype(np.float32)
               if with_out_scale else None)
  got = lrpet_jax.project_kernel(
      jnp.asarray(kernel), rank, energy_transfer=energy_transfer,
      residual_scale=residual_scale, out_scale=out_scale)
  want = reference_projection(
      kernel, rank, energy_transfer=energy_transfer,
      residual_scale=residual_scale, out_scale=out_scale)
  assert got.shape == kernel.shape and got.dtype == jnp.float32
  assert rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_rank_and_energy_after_projection(shape):
  rng = np.random.default_rng(1)
  kernel = rng.standard_normal(shape).astype(np.float32)
  m, n = int(np.prod(shape[:-1])), shape[-1]
  rank = max(1, min(m, n) // 2)
  got = np.asarray(lrpet_jax.project_kernel(kernel, rank), np.float64)
  s = np.linalg.svd(got.reshape(m, n), compute_uv=False)
  assert np.all(s[rank:] <= 1e-5 * s[0])
  assert s[rank - 1] > 1e-2 * s[0]
  np.testing.assert_allclose(
      np.linalg.norm(got), np.linalg.norm(kernel), rtol=1e-5)
  without_et = np.asarray(
      lrpet_jax.project_kernel(kernel, rank, energy_transfer=False))
  assert np.linalg.norm(without_et) < 0.99 * np.linalg.norm(kernel)


def test_ill_conditioned_spectrum():
  # Singular values spanning four decades, cut in the middle.
  rng = np.random.default_rng(2)
  w = matrix_with_spectrum(rng, 576, 64, np.logspace(0, -4, 64))
  kernel = w.reshape(3, 3, 64, 64)
  got = lrpet_jax.project_kernel(kernel, 29, residual_scale=0.1)
  assert rel_err(got, reference_projection(kernel, 29, residual_scale=0.1)) <= 1e-4


def test_already_low_rank_kernel_is_a_fixed_point():
  rng = np.random.default_rng(3)
  w = matrix_with_spectrum(rng, 144, 32, np.linspace(2.0, 1.0, 8))
  got = lrpet_jax.project_kernel(w, 8)
  assert rel_err(got, w) <= 1e-5


def test_full_rank_is_identity():
  kernel = np.random.default_rng(4).standard_normal((3, 3, 4, 8))
  kernel = kernel.astype(np.float32)
  assert rel_err(lrpet_jax.project_kernel(kernel, 8), kernel) <= 1e-5


def test_dead_layer_unchanged():
  kernel = 1e-7 * np.random.default_rng(5).standard_normal((3, 3, 8, 8))
  kernel = kernel.astype(np.float32)
  np.testing.assert_array_equal(lrpet_jax.project_kernel(kernel, 2), kernel)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kernel_is_left_unchanged_and_flagged(bad):
  rng = np.random.default_rng(11)
  kernel = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
  kernel[1, 2, 3, 4] = bad
  for fn in (lrpet_jax.project_kernel,
             jax.jit(lrpet_jax.project_kernel, static_argnums=1)):
    np.testing.assert_array_equal(fn(kernel, 3), kernel)
  assert np.isnan(lrpet_jax.energy_kept(kernel, 3))
  # In a tree: the bad kernel is untouched and its energy reads NaN; its
  # finite neighbour is projected as usual.
  good = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
  params = {"a": {"kernel": kernel}, "b": {"kernel": good}}
  ranks = {"a": {"kernel": 3}, "b": {"kernel": 3}}
  for batched in (False, True):
    out, energy = lrpet_jax.project_params(params, ranks, batched=batched,
                                           return_energy=True)
    np.testing.assert_array_equal(out["a"]["kernel"], kernel)
    assert rel_err(out["b"]["kernel"], reference_projection(good, 3)) <= 1e-4
    assert np.isnan(energy[0]) and 0 < energy[1] < 1


def test_jit_and_low_precision_dtype():
  kernel = np.random.default_rng(6).standard_normal((3, 3, 8, 16))
  fn = jax.jit(functools.partial(lrpet_jax.project_kernel, rank=4))
  got = fn(jnp.asarray(kernel, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16 and got.shape == kernel.shape
  want = reference_projection(np.asarray(jnp.asarray(kernel, jnp.bfloat16),
                                         np.float64), 4)
  assert rel_err(got, want) <= 1e-2  # bf16 output rounding


def test_batched_group_with_different_ranks():
  # One vmapped call over equal shapes, each with its own rank.
  rng = np.random.default_rng(9)
  params = {k: rng.standard_normal((3, 3, 6, 8)).astype(np.float32)
            for k in ("a", "b", "c")}
  ranks = {"a": 1, "b": 4, "c": 8}
  got = lrpet_jax.project_params(params, ranks, batched=True)
  for k, r in ranks.items():
    assert rel_err(got[k], reference_projection(params[k], r)) <= 1e-4


def test_project_params_mixed_tree():
  rng = np.random.default_rng(7)
  params = {
      "a": {"kernel": rng.standard_normal((3, 3, 8, 8)).astype(np.float32),
            "bias": rng.standard_normal(8).astype(np.float32)},
      "b": {"kernel": rng.standard_normal((3, 3, 8, 8)).astype(np.float32)},
      "c": {"kernel": rng.standard_normal((3, 3, 8, 8)).astype(np.float32)},
      "d": {"kernel": rng.standard_normal((8, 4)).astype(np.float32)},
  }
  ranks = {"a": {"kernel": 2, "bias": None}, "b": {"kernel": 5},
           "c": {"kernel": None}, "d": {"kernel": 1}}
  scales = {"a": {"kernel": None, "bias": None},
            "b": {"kernel": rng.uniform(0.5, 2, 8).astype(np.float32)},
            "c": {"kernel": None}, "d": {"kernel": None}}
  got = jax.jit(functools.partial(lrpet_jax.project_params, ranks=ranks))(
      params, out_scales=scales)
  np.testing.assert_array_equal(got["a"]["bias"], params["a"]["bias"])
  np.testing.assert_array_equal(got["c"]["kernel"], params["c"]["kernel"])
  assert rel_err(got["a"]["kernel"],
                 reference_projection(params["a"]["kernel"], 2)) <= 1e-4
  assert rel_err(got["b"]["kernel"], reference_projection(
      params["b"]["kernel"], 5, out_scale=scales["b"]["kernel"])) <= 1e-4
  assert rel_err(got["d"]["kernel"],
                 reference_projection(params["d"]["kernel"], 1)) <= 1e-4


def test_energy_kept():
  rng = np.random.default_rng(8)
  s = np.array([4.0, 2.0, 1.0, 1.0])
  w = matrix_with_spectrum(rng, 12, 4, s)
  np.testing.assert_allclose(lrpet_jax.energy_kept(w, 2), 20.0 / 22.0,
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs, field", [
    (dict(rank=0), "rank"),
    (dict(rank=9), "rank"),
    (dict(rank=2.5), "rank"),
    (dict(rank=2, residual_scale=1.5), "residual_scale"),
    (dict(rank=2, residual_scale=-0.1), "residual_scale"),
    (dict(rank=2, out_scale=np.ones(3)), "out_scale"),
    (dict(rank=2, eps=0.0), "eps"),
])
def test_bad_arguments(kwargs, field):
  kernel = np.zeros((3, 3, 4, 8), np.float32)
  with pytest.raises(ValueError, match=field):
    lrpet_jax.project_kernel(kernel, **kwargs)


def test_bad_kernel_ndim():
  with pytest.raises(ValueError, match="ndim"):
    lrpet_jax.project_kernel(np.ones(8, np.float32), 1)
