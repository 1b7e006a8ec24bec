"""deploy/export_check on its own: an artifact of the trained model passes
with differences near float round-off, one of another model is refused
naming the stage, and the check takes the uint8 pixels the artifact does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.deploy import export_check
from lrpet_jax.deploy import serving
from reference import ConvBN, randomized_bn

SHAPE, NORMALIZATION = (8, 8, 3), ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))



def _artifact(path, model, variables):
  pairs = tracing.bn_pairs(tracing.eval_apply(model), variables, SHAPE).pairs
  folded = folding.fold(variables, pairs)
  file = serving.write(path, model, folded, input_shape=SHAPE,
                       mean=NORMALIZATION[0], std=NORMALIZATION[1],
                       description={})
  return folded, file


def test_the_trained_models_artifact_passes_and_another_is_refused(tmp_path):
  model = ConvBN()
  variables = randomized_bn(model.init(jax.random.key(0),
                                       jnp.zeros((1,) + SHAPE)), 0)
  folded, file = _artifact(tmp_path / "good", model, variables)
  images = export_check.sample_images(SHAPE, count=4)
  out = export_check.check(images, NORMALIZATION, reference=(model, variables),
                           compact=None, folded=(model, folded),
                           serving_file=file)
  assert out["images"] == 4 and out["tolerance"] == 1e-3
  assert out["folded"] <= 1e-5 and out["serving"] <= 1e-5
  # An artifact of other weights: the serving stage differs by far more.
  other = randomized_bn(model.init(jax.random.key(1),
                                   jnp.zeros((1,) + SHAPE)), 1)
  _, wrong = _artifact(tmp_path / "wrong", model, other)
  with pytest.raises(export_check.ExportCheckError,
                     match=r"^export check: the serving model differs from"
                     r" the trained compact model by"):
    export_check.check(images, NORMALIZATION, reference=(model, variables),
                       compact=None, folded=(model, folded),
                       serving_file=wrong)
  with pytest.raises(ValueError, match="^images: the export check takes uint8"
                     " pixels, got float32"):
    export_check.check(images.astype(np.float32), NORMALIZATION,
                       reference=(model, variables), compact=None,
                       folded=(model, folded), serving_file=file)


def test_sample_images_are_uint8_pixels_of_the_input_shape():
  images = export_check.sample_images(SHAPE, count=3, seed=2)
  assert images.shape == (3,) + SHAPE and images.dtype == np.uint8
  assert images.min() >= 0 and images.max() > 200
