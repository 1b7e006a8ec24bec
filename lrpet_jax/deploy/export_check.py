"""The shipped artifact checked against the model it was made from.

``check`` runs a batch of input images (uint8 pixels, as the
serving artifact takes them) through the reference — the dense model at the
export's ranks (``compact.truncated``: after LRPET's final projection, the
trained model itself), or the compact model when it was trained directly —
and through each
form that is shipped: the compact model (``compact``), its BatchNorm-folded
form (``folded``) and the deserialized ``jax.export`` artifact
(``serving``). Each stage's difference is

    max |logits − reference logits| / max |reference logits|

and must be at most the tolerance of the dtype the artifact computes in
(``TOLERANCES``). A mismatch raises ``ExportCheckError`` naming the stage
and its difference; ``compact.write`` then moves the artifact aside
(``serving.rejected/``) so it is not left looking valid.
"""

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.analysis import folding
from lrpet_jax.deploy import serving

# float32: round-off of a refactored graph is ~1e-6 here; the defects this
# catches were 6e-2 to 1.3. bfloat16 artifacts (tuned models) round at 8 bits.
TOLERANCES = {"float32": 1e-3, "bfloat16": 5e-2}


class ExportCheckError(RuntimeError):
  """A shipped form of the model disagrees with the trained model: one line,
  exit status 3; the artifact is moved to ``serving.rejected/``."""


def _unfolded(variables) -> dict:
  """``variables`` as ``folding.folded_apply`` takes them, nothing folded."""
  return {**variables, folding.BIAS: {}}


def check(images, normalization, *, reference: tuple[Any, Any],
          compact: tuple[Any, Any] | None, folded: tuple[Any, Any],
          serving_file: pathlib.Path, dtype: str = "float32",
          model_kwargs=None) -> dict:
  """Each shipped stage against the reference (module docstring).

  Args:
    images: (b, H, W, C) uint8 pixels (e.g. test images).
    normalization: (mean, std) of the pixels in [0, 1], per channel.
    reference: (model, variables) of the model as trained (projected dense,
      or compact when the method trains it).
    compact: (model, variables) of the compact model, or None when it is
      the reference.
    folded: (model, folded variables) of what the artifact serves.
    serving_file: the ``jax.export`` artifact.
    dtype: the dtype the artifact computes in.
    model_kwargs: the models' evaluation flags.

  Returns:
    {"reference", "images", "tolerance", and each stage's difference}.

  Raises:
    ExportCheckError: a stage differs by more than the tolerance.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images: the export check takes uint8 pixels, got"
                     f" {images.dtype}")
  mean, std = normalization
  kw = dict(model_kwargs=model_kwargs)
  run = lambda model, variables: np.asarray(jax.jit(serving.inference_fn(
      model, variables, mean, std, **kw))(images), np.float64)
  want = run(reference[0], _unfolded(reference[1]))
  stages = {}
  if compact is not None:
    stages["compact"] = run(compact[0], _unfolded(compact[1]))
  stages["folded"] = run(*folded)
  exported = jax.export.deserialize(serving_file.read_bytes())
  stages["serving"] = np.asarray(exported.call(jnp.asarray(images)),
                                 np.float64)
  scale = max(float(np.max(np.abs(want))), 1e-12)
  tolerance = TOLERANCES[dtype]
  out = {"reference": "dense" if compact is not None else "compact",
         "images": int(images.shape[0]), "tolerance": tolerance}
  for stage, got in stages.items():
    if got.shape != want.shape:
      raise ExportCheckError(
          f"export check: the {stage} model's logits have shape {got.shape},"
          f" the trained model's {want.shape}")
    out[stage] = float(np.max(np.abs(got - want))) / scale
    if not out[stage] <= tolerance:
      raise ExportCheckError(
          f"export check: the {stage} model differs from the trained"
          f" {out['reference']} model by {out[stage]:.3g} (max |Δ logit| /"
          f" max |logit| on {out['images']} images; tolerance {tolerance:g})")
  return out


def sample_images(input_shape, count: int = 16, seed: int = 0) -> np.ndarray:
  """Random pixel images, for a check without a data set at hand."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count,) + tuple(input_shape)).astype(np.uint8)
