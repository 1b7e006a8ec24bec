"""pipeline/checkpointing on its own: a save restores bit for bit, the
newest readable checkpoint wins, a corrupt one is set aside, another run's
checkpoint is refused in one line, and the manager keeps the latest N."""

import jax
from jax import numpy as jnp
import numpy as np
import pytest

from lrpet_jax.pipeline import checkpointing, errors, steps

IDENTITY = checkpointing.run_identity("resnet8", 10, "lrpet",
                                      {"conv": {"kernel": 3}})


def state(step, value):
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), value, jnp.float32)}}
  return steps.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                          batch_stats={}, opt_state=(jnp.zeros(2),))


def saved(tmp_path, values, keep=3):
  manager = checkpointing.manager(tmp_path, keep, best_by_validation=False)
  for step, value in values:
    checkpointing.save(manager, state(step, value), IDENTITY)
    checkpointing.wait(manager)
  return manager


def test_newest_checkpoint_restores_bit_for_bit(tmp_path):
  manager = saved(tmp_path, [(4, 1.5), (8, 2.25)])
  abstract = jax.eval_shape(lambda: state(0, 0.0))
  restored, identity = checkpointing.restore_latest(manager, abstract,
                                                    IDENTITY)
  assert int(restored.step) == 8 and identity == IDENTITY
  np.testing.assert_array_equal(restored.params["conv"]["kernel"],
                                np.full((3, 3, 2, 4), 2.25, np.float32))


def test_keeps_the_latest_n(tmp_path):
  manager = saved(tmp_path, [(s, float(s)) for s in (1, 2, 3, 4)], keep=2)
  assert sorted(manager.all_steps()) == [3, 4]


def test_corrupt_newest_is_set_aside_and_the_older_one_used(tmp_path):
  manager = saved(tmp_path, [(4, 1.0), (8, 2.0)])
  for f in (tmp_path / "checkpoints" / "8").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  abstract = jax.eval_shape(lambda: state(0, 0.0))
  restored, _ = checkpointing.restore_latest(manager, abstract, IDENTITY)
  assert int(restored.step) == 4
  assert (tmp_path / "checkpoints_unreadable" / "8").is_dir()


def test_another_runs_checkpoint_is_refused(tmp_path):
  manager = saved(tmp_path, [(4, 1.0)])
  other = checkpointing.run_identity("resnet8", 10, "lrpet",
                                     {"conv": {"kernel": 2}})
  with pytest.raises(errors.ConfigError,
                     match="^workdir: holds a checkpoint of model 'resnet8'"
                     " with another method, ranks or classes"):
    checkpointing.restore_latest(manager, jax.eval_shape(
        lambda: state(0, 0.0)), other)


def test_undecided_ranks_match_either_side_of_the_decision():
  undecided = checkpointing.run_identity("resnet8", 10, "lrpet", None)
  assert checkpointing._same_run(IDENTITY, undecided)  # pylint: disable=protected-access
  assert not checkpointing._same_run(  # pylint: disable=protected-access
      IDENTITY, checkpointing.run_identity("resnet8", 100, "lrpet", None))


def test_a_step_set_aside_twice_keeps_both(tmp_path):
  """A run resumed past a corrupt checkpoint 8, then corrupt again at 8: the
  second is set aside beside the first (it was an OSError, exit 4)."""
  for values in ([(4, 1.0), (8, 2.0)], [(8, 2.0)]):
    manager = saved(tmp_path, values)
    for f in (tmp_path / "checkpoints" / "8").rglob("*"):
      if f.is_file():
        f.write_bytes(b"garbage")
    restored, _ = checkpointing.restore_latest(
        manager, jax.eval_shape(lambda: state(0, 0.0)), IDENTITY)
    assert int(restored.step) == 4
    manager.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints_unreadable").iterdir()
                ) == ["8", "8.2"]
