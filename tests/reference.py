"""Float64 NumPy references for the LRPET formulas, independent of lrpet_jax,
and test fixtures shared by several test files."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def reference_projection(kernel, rank, *, energy_transfer=True,
                         residual_scale=0.0, out_scale=None, eps=1e-5,
                         min_sigma=1e-4):
  """The paper's projection written directly from a float64 SVD."""
  kernel = np.asarray(kernel, np.float64)
  w = kernel.reshape(-1, kernel.shape[-1])
  if out_scale is not None:
    a = np.asarray(out_scale, np.float64)
    w = w * a
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  if s[0] < min_sigma:
    return kernel
  new_s = s.copy()
  if energy_transfer:
    alpha = (np.sum(s**2) - np.sum((residual_scale * s[rank:])**2)) / np.sum(
        s[:rank]**2)
    new_s[:rank] *= np.sqrt(alpha)
  new_s[rank:] *= residual_scale
  w = (u * new_s) @ vt
  if out_scale is not None:
    w = w * (a / (a * a + eps))
  return w.reshape(kernel.shape)


def rel_err(x, ref):
  x = np.asarray(x, np.float64)
  ref = np.asarray(ref, np.float64)
  return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def matrix_with_spectrum(rng, m, n, singular_values):
  """An m×n float32 matrix with the given singular values."""
  k = len(singular_values)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return ((u * singular_values) @ v.T).astype(np.float32)


class ConvBN(nn.Module):
  """conv (3×3, 6 filters, no bias) → BatchNorm → ReLU, mean → Dense(5):
  the deploy tests' model with one foldable BatchNorm."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    return nn.Dense(5, name="head")(nn.relu(x).mean(axis=(1, 2)))


def randomized_bn(variables, seed):
  """Non-trivial BatchNorm γ, β and running statistics (and layer biases)."""
  rng = np.random.default_rng(seed)

  def fix(path, x):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    if name in ("bias", "mean") and x.ndim == 1:
      return jnp.asarray(rng.uniform(-0.2, 0.2, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(fix, variables)


def xla_flags(devices: int) -> str:
  """The session's ``XLA_FLAGS`` (``conftest``) with ``devices`` host
  devices: for the environment of a subprocess."""
  return (os.environ.get("XLA_FLAGS", "")
          + f" --xla_force_host_platform_device_count={devices}").strip()
