"""The README and docs/: every Python block is run by a test (the README's
API example here; the others by the test named in ``RUN_BY``, on what its
run wrote), and every page is linked from the README."""

import re

import numpy as np
import pytest

import docs

# (page, a string only its block holds) → the test file that runs that block.
RUN_BY = {
    ("README.md", "lrpet_jax.Factorized("): "tests/test_docs.py",
    ("docs/api.md", "def train_step("): "tests/test_docs.py",
    ("docs/own-model.md", "class OwnNet"): "tests/analysis/test_own_models.py",
    ("docs/nnx.md", "class OwnNnxNet"): "tests/analysis/test_nnx_models.py",
    ("docs/experiments.md", "experiment.from_config"):
        "tests/pipeline/test_experiment_api.py",
    ("docs/training.md", "load_run("): "tests/pipeline/test_loop.py",
    ("docs/training.md", "dense_final"): "tests/pipeline/test_train.py",
    ("docs/deploy.md", "model.jax_export"): "tests/pipeline/test_train.py",
}


def test_every_python_block_is_run_by_a_test():
  for page in docs.PAGES:
    for block in docs.blocks(page):
      runners = [key for key in RUN_BY if key[0] == page and key[1] in block]
      assert len(runners) == 1, (page, block[:200])
  for (page, marker), test_file in RUN_BY.items():
    docs.block(page, marker)  # exactly one block holds it
    if test_file != "tests/test_docs.py":
      source = (docs.ROOT / test_file).read_text()
      assert f'docs.block("{page}", "{marker}")' in source, (page, marker)


def test_every_page_is_linked_from_the_readme_and_links_resolve():
  readme = docs.text("README.md")
  for page in docs.PAGES[1:]:
    assert f"]({page})" in readme, page
  for page in docs.PAGES:
    prose = re.sub(r"```.*?```", "", docs.text(page), flags=re.S)
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", prose):
      path = (docs.ROOT / page).parent / target
      assert path.exists(), (page, target)


@pytest.mark.slow  # 36 s: ResNet-20 traced for its costs
def test_readme_example_runs_and_its_compact_model_is_exact():
  namespace = {}
  block = docs.block("README.md", "lrpet_jax.Factorized(")
  exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  ns = namespace
  want = ns["model"].apply(ns["dense"], ns["x"], train=False)
  np.testing.assert_allclose(ns["logits"], want, rtol=1e-4, atol=1e-4)
  # The projected kernels have rank r (a float64 NumPy SVD).
  kernel = np.asarray(ns["params"]["conv"]["kernel"], np.float64)
  s = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
  assert s[ns["ranks"]["conv"]["kernel"]:].max() <= 1e-5 * s[0]


def test_api_page_train_step_runs():
  namespace = {}
  block = docs.block("docs/api.md", "def train_step(")
  exec(compile(block, "docs/api.md", "exec"), namespace)  # pylint: disable=exec-used
  assert np.isfinite(float(namespace["loss"]))
  w = np.asarray(namespace["params"]["conv"]["kernel"]).reshape(-1, 16)
  s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
  assert s[8] <= 1e-5 * s[0]  # rank 8 of 16 after the final projection


def test_readme_stays_short():
  assert len(docs.text("README.md").splitlines()) <= 300
