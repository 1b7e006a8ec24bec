"""deploy/serving on its own: the artifact, deserialized by JAX alone, gives
the unfolded model's logits from raw pixels at any batch size, and its spec
says what it takes and returns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.deploy import serving
from reference import ConvBN, randomized_bn, rel_err

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)



@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
  model = ConvBN()
  variables = randomized_bn(model.init(jax.random.key(0),
                                       jnp.zeros((1, 8, 8, 3))), 0)
  pairs = tracing.bn_pairs(tracing.eval_apply(model), variables,
                           (8, 8, 3)).pairs
  out = tmp_path_factory.mktemp("serving")
  path = serving.write(out, model, folding.fold(variables, pairs),
                       input_shape=(8, 8, 3), mean=MEAN, std=STD,
                       description={"model": "conv_bn"})
  return model, variables, out, path


def test_logits_from_raw_pixels_at_any_batch_size(artifact):
  model, variables, _, path = artifact
  served = jax.export.deserialize(path.read_bytes())
  for batch in (1, 3):
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, 8, 8, 3),
                                                   np.uint8)
    x = (pixels / 255.0 - np.array(MEAN)) / np.array(STD)  # by hand
    want = model.apply(variables, jnp.asarray(x, jnp.float32), train=False)
    got = served.call(pixels)
    assert got.shape == (batch, 5) and got.dtype == np.float32
    assert rel_err(got, want) <= 1e-5


def test_the_spec_says_what_the_artifact_takes_and_returns(artifact):
  _, _, out, path = artifact
  spec = json.loads((out / "spec.json").read_text())
  assert path == out / "model.jax_export"
  assert spec["input"] == {"shape": ["b", 8, 8, 3], "dtype": "uint8",
                           "range": [0, 255],
                           "normalization": {"mean": list(MEAN),
                                             "std": list(STD)}}
  assert spec["output"] == {"shape": ["b", 5], "dtype": "float32",
                            "meaning": "logits"}
  assert spec["platforms"] == ["cpu", "cuda"]
  assert spec["compute_dtype"] == "float32" and spec["model"] == "conv_bn"
  served = jax.export.deserialize(path.read_bytes())
  assert served.platforms == ("cpu", "cuda")
