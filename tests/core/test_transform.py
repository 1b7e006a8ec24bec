"""low_rank_projection / lrpet inside Optax chains, against NumPy references."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrpet_jax
from reference import reference_projection, rel_err


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  return {
      "conv_a": {"kernel": f32(3, 3, 4, 8), "bias": f32(8)},
      "conv_b": {"kernel": f32(3, 3, 4, 8)},   # same shape: batched with conv_a
      "bn": {"scale": f32(8), "bias": f32(8)},
      "head": {"kernel": f32(8, 5), "bias": f32(5)},
  }


RANKS = {
    "conv_a": {"kernel": 3, "bias": None},
    "conv_b": {"kernel": 6},
    "bn": {"scale": None, "bias": None},
    "head": {"kernel": 2, "bias": None},
}


def grads_for(step, params):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(
      lambda p: rng.standard_normal(p.shape).astype(np.float32), params)


def flat(tree):
  return {"/".join(k.key for k in path): np.asarray(x, np.float64)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_lrpet_matches_pytorch_sgd_plus_projection():
  every, lr, momentum, wd = 3, 0.05, 0.9, 1e-3
  schedule = optax.piecewise_constant_schedule(lr, {4: 0.1})
  opt = lrpet_jax.lrpet(schedule, RANKS, every=every, momentum=momentum,
                        weight_decay=wd)
  params = make_params()
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  ref = flat(params)
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  rank_of = {"conv_a/kernel": 3, "conv_b/kernel": 6, "head/kernel": 2}
  for t in range(7):
    grads = grads_for(t, params)
    params, state = step(params, state, grads)
    # torch.optim.SGD, written out in float64.
    lr_t = lr if t < 4 else lr * 0.1
    for k, g in flat(grads).items():
      g = g + wd * ref[k]
      buf[k] = momentum * buf[k] + g
      ref[k] = ref[k] - lr_t * buf[k]
    if (t + 1) % every == 0:
      for k, r in rank_of.items():
        ref[k] = reference_projection(ref[k], r)
    got = flat(params)
    for k in ref:
      assert rel_err(got[k], ref[k]) <= 1e-4, (t, k)
  assert int(state[-1].step) == 7


def test_identity_between_projections_and_projection_on_schedule():
  # Inside clip → adamw → projection: compare each step with the same chain
  # without the projection, fed the same params and grads.
  every = 2
  base = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-2, weight_decay=1e-2))
  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(1e-2, weight_decay=1e-2),
                    lrpet_jax.low_rank_projection(RANKS, every=every))
  params = make_params(1)
  state, base_state = opt.init(params), base.init(params)
  update = jax.jit(opt.update)
  for t in range(5):
    grads = grads_for(t, params)
    updates, state = update(grads, state, params)
    base_updates, base_state = base.update(grads, base_state, params)
    new = flat(optax.apply_updates(params, updates))
    stepped = flat(optax.apply_updates(params, base_updates))
    projecting = (t + 1) % every == 0
    for k in new:
      if k in ("conv_a/kernel", "conv_b/kernel", "head/kernel") and projecting:
        r = {"conv_a/kernel": 3, "conv_b/kernel": 6, "head/kernel": 2}[k]
        assert rel_err(new[k], reference_projection(stepped[k], r)) <= 1e-4
      else:
        np.testing.assert_allclose(new[k], stepped[k], rtol=1e-6, atol=1e-7)
    params = optax.apply_updates(params, updates)


def test_out_scales_are_honoured():
  params = make_params(2)
  out_scales = jax.tree.map(lambda r: None, RANKS,
                            is_leaf=lambda x: x is None)
  a = np.random.default_rng(3).uniform(0.3, 3.0, 8).astype(np.float32)
  out_scales["conv_a"]["kernel"] = jnp.asarray(a)
  opt = lrpet_jax.low_rank_projection(RANKS, every=1)
  state = opt.init(params)
  grads = grads_for(0, params)
  updates, new_state = jax.jit(opt.update)(grads, state, params,
                                           out_scales=out_scales)
  new = optax.apply_updates(params, updates)
  stepped = flat(optax.apply_updates(params, grads))
  # Leaves without a rank: the update passes through bit for bit.
  np.testing.assert_array_equal(updates["bn"]["scale"], grads["bn"]["scale"])
  np.testing.assert_array_equal(updates["head"]["bias"], grads["head"]["bias"])
  assert rel_err(new["conv_a"]["kernel"], reference_projection(
      stepped["conv_a/kernel"], 3, out_scale=a)) <= 1e-4
  assert rel_err(new["conv_b"]["kernel"],
                 reference_projection(stepped["conv_b/kernel"], 6)) <= 1e-4
  # Energy kept by each truncation, in leaf order (conv_a, conv_b, head).
  want = []
  for k, r, a_k in (("conv_a/kernel", 3, a), ("conv_b/kernel", 6, None),
                    ("head/kernel", 2, None)):
    w = stepped[k].reshape(-1, stepped[k].shape[-1])
    s = np.linalg.svd(w if a_k is None else w * a_k, compute_uv=False)
    want.append(np.sum(s[:r] ** 2) / np.sum(s ** 2))
  np.testing.assert_allclose(new_state.inner_state.energy_kept, want,
                             rtol=1e-5)
  assert np.all(np.asarray(state.inner_state.energy_kept) == 1.0)


def test_state_survives_flatten_unflatten():
  params = make_params(4)
  opt = lrpet_jax.lrpet(0.1, RANKS, every=2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  _, state = update(grads_for(0, params), state, params)
  leaves, treedef = jax.tree.flatten(state)
  restored = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
  grads = grads_for(1, params)
  u1, s1 = update(grads, state, params)
  u2, s2 = update(grads, restored, params)
  jax.tree.map(np.testing.assert_array_equal, u1, u2)
  assert int(s1[-1].step) == int(s2[-1].step) == 2
  # The second update was a projection step: conv_b now has rank 6 of 8.
  w = np.asarray(optax.apply_updates(params, u2)["conv_b"]["kernel"])
  s = np.linalg.svd(w.reshape(-1, 8).astype(np.float64), compute_uv=False)
  assert s[6] <= 1e-5 * s[0] < s[5]


def test_eigendecomposition_only_inside_cond():
  params = make_params(5)
  opt = lrpet_jax.low_rank_projection(RANKS, every=4)
  jaxpr = jax.make_jaxpr(opt.update)(params, opt.init(params), params)
  top_level = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
  assert "cond" in top_level and "eigh" not in top_level
  assert "eigh" in str(jaxpr)


def primitives(jaxpr):
  """Every primitive name in a jaxpr, sub-jaxprs (cond branches, pjit) included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      names |= primitives(sub)
  return names


def test_static_project_traces_no_cond():
  params = make_params(5)
  opt = lrpet_jax.lrpet(0.1, RANKS, every=4)
  state = opt.init(params)
  trace = lambda project: primitives(jax.make_jaxpr(
      lambda g, s, p: opt.update(g, s, p, project=project))(
          params, state, params).jaxpr)
  counted, plain, projecting = trace(None), trace(False), trace(True)
  assert "cond" in counted and "eigh" in counted
  assert not {"cond", "eigh", "svd"} & plain
  assert "cond" not in projecting and "eigh" in projecting


def test_host_schedule_equals_counter_schedule():
  # Three projection periods, momentum and weight decay carried across them;
  # the host decides with a Python bool, the counter with lax.cond. In
  # float64, so that the comparison sees the schedule, not the float32
  # round-off of two compilations of the same projection (~1e-6 relative).
  every = 3
  opt = lrpet_jax.lrpet(optax.piecewise_constant_schedule(0.05, {5: 0.1}),
                        RANKS, every=every, weight_decay=1e-3)
  f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)

  def run(schedule, steps=10):
    compiled = {}  # one update function per mode
    params = f64(make_params(6))
    state = opt.init(params)
    for t in range(steps):
      project = schedule(t)
      if project not in compiled:
        compiled[project] = jax.jit(
            lambda g, s, p, project=project: opt.update(g, s, p,
                                                        project=project))
      updates, state = compiled[project](f64(grads_for(t, params)), state,
                                         params)
      params = optax.apply_updates(params, updates)
    return params, state

  with jax.enable_x64(True):
    counter_params, counter_state = run(lambda t: None)
    host = run(lambda t: (t + 1) % every == 0)
    # Mixed: the counter decides on even steps, the host on odd ones.
    mixed = run(lambda t: None if t % 2 == 0 else (t + 1) % every == 0)
    for params, state in (host, mixed):
      for k, v in flat(counter_params).items():
        assert rel_err(flat(params)[k], v) <= 1e-6, k
      assert int(state[-1].step) == int(counter_state[-1].step) == 10
      np.testing.assert_allclose(optax.tree.get(state, "energy_kept"),
                                 optax.tree.get(counter_state, "energy_kept"),
                                 atol=1e-6)
    # The host-scheduled run did project: right after its third projection
    # conv_b has rank 6 of 8.
    w = flat(run(lambda t: (t + 1) % every == 0, steps=9)[0])["conv_b/kernel"]
  s = np.linalg.svd(w.reshape(-1, 8), compute_uv=False)
  assert s[6] <= 1e-9 * s[0] < s[5]


def test_project_must_be_static():
  params = make_params()
  opt = lrpet_jax.low_rank_projection(RANKS, every=2)
  with pytest.raises(TypeError, match="project"):
    jax.jit(lambda p, s, flag: opt.update(p, s, p, project=flag))(
        params, opt.init(params), True)


@pytest.mark.parametrize("every", [0, -1, 2.5, True])
def test_bad_every(every):
  with pytest.raises(ValueError, match="every"):
    lrpet_jax.low_rank_projection(RANKS, every=every)


def test_ranks_not_matching_params():
  params = make_params()
  opt = lrpet_jax.low_rank_projection({"conv_a": {"kernel": 3}}, every=1)
  with pytest.raises(ValueError, match="ranks"):
    opt.init(params)


def test_rank_too_large_for_its_leaf():
  ranks = jax.tree.map(lambda r: r, RANKS, is_leaf=lambda x: x is None)
  ranks["head"]["kernel"] = 6
  with pytest.raises(ValueError, match="head/kernel"):
    lrpet_jax.low_rank_projection(ranks, every=1).init(make_params())


@pytest.mark.parametrize("kwargs, field", [
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(momentum=0.0, nesterov=True), "nesterov"),
    (dict(residual_scale=2.0), "residual_scale"),
])
def test_lrpet_bad_hyperparameters(kwargs, field):
  with pytest.raises(ValueError, match=field):
    lrpet_jax.lrpet(0.1, RANKS, every=1, **kwargs)


def test_lrpet_bad_learning_rate():
  with pytest.raises(ValueError, match="learning_rate"):
    lrpet_jax.lrpet(0.0, RANKS, every=1)


@pytest.mark.parametrize("name,value,changed", [
    ("learning_rate", 0.1, 0.05), ("momentum", 0.9, 0.5),
    ("weight_decay", 1e-4, 1e-2), ("residual_scale", 0.0, 0.3)])
def test_lrpet_under_inject_hyperparams(name, value, changed):
  """Each numeric argument injected (traced inside jit), the others static:
  the update is lrpet's at the injected value, also after changing it."""
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(
      rng.standard_normal((3, 3, 4, 8)), jnp.float32)}}
  grads = {"conv": {"kernel": jnp.asarray(
      rng.standard_normal((3, 3, 4, 8)), jnp.float32)}}
  ranks = lrpet_jax.uniform_ranks(params, 0.5)
  kwargs = dict(learning_rate=0.1, every=1, momentum=0.9, weight_decay=1e-4,
                residual_scale=0.0)
  static = tuple(k for k in kwargs if k != name) + ("ranks",)
  tx = optax.inject_hyperparams(lrpet_jax.lrpet, static_args=static)(
      ranks=ranks, **kwargs)
  state = tx.init(params)
  for v in (value, changed):
    state.hyperparams[name] = jnp.asarray(v)
    got, _ = jax.jit(tx.update)(grads, state, params)
    want_tx = lrpet_jax.lrpet(ranks=ranks, **{**kwargs, name: v})
    want, _ = want_tx.update(grads, want_tx.init(params), params)
    np.testing.assert_allclose(got["conv"]["kernel"], want["conv"]["kernel"],
                               rtol=1e-4, atol=1e-6)


def test_lrpet_under_inject_hyperparams_every_static_only():
  """The issue's call: only ``every`` static, every number injected (it
  raised TracerBoolConversionError in the residual_scale check)."""
  rng = np.random.default_rng(1)
  params = {"conv": {"kernel": jnp.asarray(
      rng.standard_normal((3, 3, 4, 8)), jnp.float32)}}
  grads = jax.tree.map(jnp.ones_like, params)
  ranks = lrpet_jax.uniform_ranks(params, 0.5)
  tx = optax.inject_hyperparams(lrpet_jax.lrpet, static_args=("every",))(
      learning_rate=0.1, ranks=ranks, every=1)
  got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  plain = lrpet_jax.lrpet(0.1, ranks, every=1)
  want, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(got["conv"]["kernel"], want["conv"]["kernel"],
                             rtol=1e-4, atol=1e-6)
