"""Plots a finished run writes into ``WORKDIR/plots/``.

- ``training.png``: training loss; training and test top-1 (with the test
  top-1 just before each projection, where logged); energy kept by each
  projection's truncation (mean and min over layers).
- ``layers.png``: per projected layer, the kept rank as a fraction of the
  full rank and the energy its last truncation kept (``compact_report.json``).

matplotlib is imported lazily (Agg backend); without it ``write`` returns [].
"""

import json
import pathlib


def read_metrics(path: pathlib.Path) -> dict[str, tuple[list, list]]:
  """``metrics.jsonl`` as {name: (steps, values)}."""
  series = {}
  for line in path.read_text().splitlines():
    if not line:
      continue
    row = json.loads(line)
    step = row.pop("step")
    for k, v in row.items():
      if isinstance(v, (int, float)) and v is not None:
        steps, values = series.setdefault(k, ([], []))
        steps.append(step)
        values.append(v)
  return series


def _training_figure(plt, series):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  loss, acc, energy = axes
  if "train_loss" in series:
    loss.plot(*series["train_loss"], label="train loss")
  loss.set(xlabel="step", ylabel="loss", title="training loss")
  for name, style in (("train_accuracy", "-"), ("test_top1", "o-"),
                      ("test_top1_pre_projection", "x--"),
                      ("val_top1", "s-")):
    if name in series:
      acc.plot(*series[name], style, label=name)
  acc.set(xlabel="step", ylabel="top-1", title="accuracy")
  for name in ("projection_energy_kept_mean", "projection_energy_kept_min"):
    if name in series:
      energy.plot(*series[name], ".-", label=name.rsplit("_", 1)[-1])
  energy.set(xlabel="step", ylabel="energy kept",
             title="energy kept by each projection")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def _layers_figure(plt, report):
  layers = [l for l in report["layers"] if l.get("rank") is not None]
  names = [l["layer"] for l in layers]
  x = range(len(layers))
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4))
  ax.bar([i - 0.2 for i in x], [l["rank"] / l["full_rank"] for l in layers],
         width=0.4, label="rank / full rank")
  energy = [l.get("energy_kept") for l in layers]
  if any(e is not None for e in energy):
    ax.bar([i + 0.2 for i in x], [e if e is not None else 0 for e in energy],
           width=0.4, label="energy kept (last projection)")
  ax.set_xticks(list(x), names, rotation=90, fontsize=7)
  ax.set(ylim=(0, 1.25), title=f"{report['model']}: per-layer rank and energy")
  ax.legend(fontsize=8, loc="upper center", ncol=2)
  fig.tight_layout()
  return fig


def write(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Writes the plots the workdir's files allow; returns their paths."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  out = workdir / "plots"
  written = []
  figures = []
  if (workdir / "metrics.jsonl").is_file():
    figures.append(("training.png", lambda: _training_figure(
        plt, read_metrics(workdir / "metrics.jsonl"))))
  if (workdir / "compact_report.json").is_file():
    figures.append(("layers.png", lambda: _layers_figure(
        plt, json.loads((workdir / "compact_report.json").read_text()))))
  for name, make in figures:
    out.mkdir(exist_ok=True)
    fig = make()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    written.append(out / name)
  return written
