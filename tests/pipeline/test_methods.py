"""pipeline/methods on its own: the registry, each method's projection
schedule and final phases, the energy kept read by name, and one-line
refusals of fields another method reads."""

import jax
from jax import numpy as jnp
import numpy as np
import pytest

from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.pipeline import ending, methods


def setting(**overrides):
  params = {"conv": {"kernel": jnp.zeros((3, 3, 4, 8))},
            "head": {"kernel": jnp.zeros((8, 10))}}
  fields = dict(
      build_model=lambda ranks=None, dtype=None: None, dtype=None,
      dense_abstract=None,
      ranks=ranks_lib.uniform_ranks(params, 0.5,
                                    include=ranks_lib.by_name(["conv/kernel"])),
      pairing=None, learning_rate=0.1, momentum=0.9, weight_decay=0.0,
      nesterov=False, project_every=5, energy_transfer=True,
      residual_scale=0.0, bn_rectification=False)
  fields.update(overrides)
  return params, methods.Setting(**fields)


def test_lrpet_projects_at_the_end_of_every_period():
  _, s = setting()
  lrpet = methods.method_for("lrpet", s)
  # Step k's update is the (k+1)-th: steps 4, 9, 14 end a period of 5.
  assert [k for k in range(15) if lrpet.projects(k)] == [4, 9, 14]
  assert lrpet.next_projection(5) == 9
  assert lrpet.FINAL_PHASES[0] == ending.FINAL_PROJECTION


def test_dense_never_projects_and_ends_without_export():
  _, s = setting()
  dense = methods.method_for("dense", s)
  assert dense.projects(4) is None and dense.next_projection(0) is None
  assert ending.COMPACT_EXPORT not in dense.FINAL_PHASES


def test_energy_kept_is_read_by_name_after_a_projection():
  params, s = setting()
  lrpet = methods.method_for("lrpet", s)
  params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0),
                                                    p.shape), params)
  opt_state = lrpet.tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  _, opt_state, pre = lrpet.update(grads, opt_state, params, {}, True)
  kept = lrpet.energy_kept(opt_state)
  # No gradient: the projection's input is params; energy kept by rank 4 of
  # min(36, 8) = 8, from a float64 SVD of the conv kernel as a matrix.
  s_ = np.linalg.svd(np.asarray(params["conv"]["kernel"], np.float64)
                     .reshape(36, 8), compute_uv=False)
  assert kept.shape == (1,)
  np.testing.assert_allclose(kept[0], (s_[:4] ** 2).sum() / (s_ ** 2).sum(),
                             rtol=1e-5)
  np.testing.assert_array_equal(pre["conv"]["kernel"],
                                params["conv"]["kernel"])


@pytest.mark.parametrize("name, config, message", [
    ("prune", {}, "method: unknown 'prune'; valid: lrpet, dense, compact"),
    ("dense", {"log_spectra": True},
     "log_spectra: only for method 'lrpet', not 'dense'"),
    ("lrpet", {"init_from": "/x"},
     "init_from: only for method 'compact', not 'lrpet'"),
])
def test_fields_of_other_methods_are_refused(name, config, message):
  with pytest.raises(ValueError) as e:
    methods.check(name, config)
  assert str(e.value) == message
