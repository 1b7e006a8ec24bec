"""Training checkpoints: the Orbax manager, run identity, save and restore.

``WORKDIR/checkpoints/<step>/`` holds ``state`` (the raw training state) and
``identity`` (model, method, classes and ranks: what a resumed run must
match). Saves are asynchronous: the state is copied to the host, then written
in the background while training goes on; Orbax writes into a temporary
folder and renames it when complete, so a killed run leaves no half-written
checkpoint behind. Unreadable checkpoints are moved to
``WORKDIR/checkpoints_unreadable/`` and the next older one is tried.
"""

import contextlib
import pathlib

from absl import logging
import jax
from jax.experimental import multihost_utils

from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import hosts
from lrpet_jax.pipeline import errors
from lrpet_jax.pipeline import records


def manager(workdir: pathlib.Path, keep: int, best_by_validation: bool):
  """Orbax manager of ``WORKDIR/checkpoints``.

  Kept: the latest ``keep`` and, with ``best_by_validation``, the best one by
  ``val_accuracy``; never a selection on the test set.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint.checkpoint_managers import preservation_policy as pp  # pylint: disable=g-import-not-at-top

  policies = [pp.LatestN(n=keep)]
  if best_by_validation:
    policies.append(pp.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                             keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          preservation_policy=pp.AnyPreservationPolicy(policies),
          enable_async_checkpointing=True),
  )


def run_identity(model: str, num_classes: int, method: str, ranks) -> dict:
  """What a resumed run must match: the checkpoint's ``identity`` item.
  ``ranks`` None: a rank policy has not decided them yet."""
  return {"model": model, "num_classes": num_classes, "method": method,
          "ranks": (None if ranks is None
                    else ranks_lib.as_json(ranks))}


def _same_run(saved: dict, identity: dict) -> bool:
  """Equal identities; a run whose ranks are still to be decided matches
  checkpoints from before and after its decision (they carry the ranks)."""
  if identity["ranks"] is None:
    return ({k: v for k, v in saved.items() if k != "ranks"}
            == {k: v for k, v in identity.items() if k != "ranks"})
  return saved == identity


def save(checkpoints, state, identity, metrics=None):
  """Starts an asynchronous save of ``state`` at its step.

  The state is copied to host memory first (its device buffers are donated
  to the next training call); the write goes on in the background. Call
  ``wait`` before relying on it, ``check_saves`` to learn of a failure.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  host_state = jax.device_get(state)
  step = int(host_state.step)
  with _failure(checkpoints, step):
    checkpoints.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state),
        identity=ocp.args.JsonSave(identity)), metrics=metrics, force=True)
  _pending[id(checkpoints)] = step


_pending = {}  # id(manager) → the step of its latest save started


@contextlib.contextmanager
def _failure(checkpoints, step):
  """Turns any error while saving checkpoint ``step`` into ``SaveFailed``."""
  try:
    yield
  except errors.SaveFailed:
    raise
  except Exception as error:  # pylint: disable=broad-except
    steps = [s for s in checkpoints.all_steps() if s != step]
    raise errors.SaveFailed(
        f"checkpoint {step} could not be saved to"
        f" {pathlib.Path(checkpoints.directory) / str(step)}"
        f" ({type(error).__name__}: {error}); the last good checkpoint is"
        f" {max(steps) if steps else None} (kept)") from error


def check_saves(checkpoints) -> None:
  """Raises ``SaveFailed`` if a background save has failed (a cheap check,
  made at every boundary of the loop)."""
  with _failure(checkpoints, _pending.get(id(checkpoints))):
    checkpoints.check_for_errors()


def wait(checkpoints) -> None:
  """Waits for the background save; ``SaveFailed`` if it failed."""
  with _failure(checkpoints, _pending.get(id(checkpoints))):
    checkpoints.wait_until_finished()


def _set_aside(checkpoints, step, error):
  """Moves an unreadable checkpoint to WORKDIR/checkpoints_unreadable/<step>
  (<step>.2, .3, ... if one of that step was set aside before)."""
  source = pathlib.Path(checkpoints.directory) / str(step)
  target = source.parent.parent / "checkpoints_unreadable" / str(step)
  copies = 1
  while target.exists():  # set aside at this step before: keep both
    copies += 1
    target = target.with_name(f"{step}.{copies}")
  logging.warning("checkpoint %d is unreadable (%s); moved to %s, trying an"
                  " older one", step, type(error).__name__, target)
  if hosts.is_writer():
    target.parent.mkdir(exist_ok=True)
    source.rename(target)
  multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  checkpoints.reload()


def restore_latest(checkpoints, abstract_state, identity):
  """(state, its identity) of the newest readable checkpoint (falling back
  past corrupt ones), or (None, None)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      saved_identity = checkpoints.restore(step, args=ocp.args.Composite(
          identity=ocp.args.JsonRestore()))["identity"]
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(checkpoints, step, e)
      continue
    saved_identity.setdefault("method", records.RUN_FIELDS["method"])
    if not _same_run(saved_identity, identity):
      raise errors.ConfigError(
          f"workdir: holds a checkpoint of model {saved_identity.get('model')!r}"
          " with another method, ranks or classes than this config; use a new"
          " workdir")
    try:
      return checkpoints.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"], (
              saved_identity)
    except Exception as e:  # pylint: disable=broad-except
      if "Structure mismatch" in str(e):  # readable, but another state layout
        raise errors.ConfigError(
            f"workdir: checkpoint {step} holds a training state of another"
            " layout (another optimizer setting such as momentum, or another"
            " lrpet_jax version); resume with the setting that wrote it or use"
            " a new workdir") from None
      _set_aside(checkpoints, step, e)
  return None, None
