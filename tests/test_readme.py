"""The README's API example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)  # pylint: disable=exec-used
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert np.isfinite(float(namespace["loss"]))
  w = np.asarray(namespace["params"]["conv"]["kernel"]).reshape(-1, 16)
  s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
  assert s[8] <= 1e-5 * s[0]  # rank 8 of 16 after the final projection
