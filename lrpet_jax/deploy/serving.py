"""A standalone inference artifact: the model as a serialized ``jax.export``.

``write(out_dir, model, folded, ...)`` writes

    model.jax_export   jax.export serialization (StableHLO) of
                       images (b, H, W, C) uint8 pixels (as decoded, and as
                       ``load_run`` hands them out) → logits (b, num_classes) float32; the batch size b is
                       symbolic, the weights (BatchNorm folded) are constants,
                       and the input normalization is inside; lowered for CPU
                       and CUDA
    spec.json          input and output spec, normalization, model, ranks

A user needs JAX only, not this package:

    import jax, numpy as np
    fn = jax.export.deserialize(open("model.jax_export", "rb").read())
    logits = fn.call(np.asarray(images, np.uint8))   # images: (b, 32, 32, 3)
"""

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from lrpet_jax.analysis import folding

PLATFORMS = ("cpu", "cuda")
FILE = "model.jax_export"
# The artifact's input: 8-bit pixels, what every image decoder gives and the
# model was trained on (an artifact written before 2026-12 takes float32).
INPUT_DTYPE = "uint8"


def inference_fn(model, folded: Any, mean, std, dtype=None,
                 model_kwargs=None):
  """images (b, H, W, C) pixels in [0, 255] (uint8, or any dtype) → float32
  logits, BatchNorm folded.

  ``model_kwargs``: the model's evaluation flags (default ``train=False``).
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)

  def infer(images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    if dtype is not None:
      x = x.astype(dtype)
    return folding.folded_apply(model, folded, x,
                                **(model_kwargs or {})).astype(jnp.float32)

  return infer


def write(out_dir, model, folded: Any, *, input_shape, mean, std,
          description: dict, dtype=None, model_kwargs=None) -> pathlib.Path:
  """Serializes the folded model (see the module docstring); returns the file.

  ``model``: any model with ``apply`` (dense, or ``factorized.Factorized``);
  ``model_kwargs``: its evaluation flags (default ``train=False``).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), INPUT_DTYPE)
  exported = jax.export.export(
      jax.jit(inference_fn(model, folded, mean, std, dtype, model_kwargs)),
      platforms=PLATFORMS)(spec)
  (out / FILE).write_bytes(exported.serialize())
  (out / "spec.json").write_text(json.dumps({
      "input": {"shape": ["b", *input_shape], "dtype": INPUT_DTYPE,
                "range": [0, 255],
                "normalization": {"mean": list(mean), "std": list(std)}},
      "output": {"shape": ["b", int(exported.out_avals[0].shape[-1])],
                 "dtype": "float32", "meaning": "logits"},
      "platforms": list(PLATFORMS),
      "compute_dtype": jnp.dtype(dtype or jnp.float32).name,
      "jax_version": jax.__version__,
      **description,
  }, indent=1) + "\n")
  return out / FILE
