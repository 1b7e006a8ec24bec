"""Plots a finished run writes into ``WORKDIR/plots/``.

- ``training.png``: training loss; training and test top-1 (with the test
  top-1 just before each projection, where logged, and the final model's as
  a star), each projection step marked by a dotted line; energy kept by each projection's truncation (mean and min over
  layers), for a run that projected.
- ``layers.png``: per projected layer, the kept rank as a fraction of the
  full rank and the energy its last truncation kept (``compact_report.json``;
  not for a compact model trained directly, which has no per-layer rows).
- ``ranks.png``: a rank policy's chosen ranks against the uniform ratio's
  (``rank_decision.json``).

matplotlib is imported lazily (Agg backend); without it ``write`` returns [].
"""

import json
import pathlib


def read_metrics(path: pathlib.Path) -> dict[str, tuple[list, list]]:
  """``metrics.jsonl`` as {name: (steps, values)}."""
  return read_metrics_rows(
      json.loads(line) for line in path.read_text().splitlines() if line)


def read_metrics_rows(rows) -> dict[str, tuple[list, list]]:
  """Rows {"step": s, name: value, ...} as {name: (steps, values)}."""
  series = {}
  for row in rows:
    row = dict(row)
    step = row.pop("step")
    for k, v in row.items():
      if isinstance(v, (int, float)) and v is not None:
        steps, values = series.setdefault(k, ([], []))
        steps.append(step)
        values.append(v)
  return series


# Every series drawn, with its label; each point has a marker, so a series of
# one point shows.
ACCURACY = (("train_accuracy", "train top-1"), ("test_top1", "test top-1"),
            ("test_top1_pre_projection", "test top-1 before projection"),
            ("val_top1", "val top-1"))
ENERGY = (("projection_energy_kept_mean", "energy kept, mean"),
          ("projection_energy_kept_min", "energy kept, min"))


def _training_figure(plt, series, summary=None):
  """Loss and top-1 (with the final model's, after the final projection and
  precise BN, as a star), each projection step a dotted line; the energy
  each projection kept, if it projected."""
  energy = [(k, label) for k, label in ENERGY if k in series]
  fig, axes = plt.subplots(1, 2 + bool(energy),
                           figsize=(5 * (2 + bool(energy)), 4))
  if "train_loss" in series:
    axes[0].plot(*series["train_loss"], ".-", label="train loss")
  axes[0].set(xlabel="step", ylabel="loss", title="training loss")
  for k, label in ACCURACY:
    if k in series:
      axes[1].plot(*series[k], "o-" if k != "train_accuracy" else ".-",
                   markersize=4, label=label)
  projections = series.get(ENERGY[0][0], ([], []))[0]
  for ax in axes[:2]:
    for i, step in enumerate(projections):
      ax.axvline(step, color="0.6", linewidth=0.8, linestyle=":",
                 label="projection" if i == 0 else None)
  if summary and summary.get("final_accuracy") is not None:
    axes[1].plot([summary["steps"]], [summary["final_accuracy"]], "*",
                 markersize=14, label="final top-1 (deployed model)")
  axes[1].set(xlabel="step", ylabel="top-1", title="accuracy")
  for k, label in energy:
    axes[2].plot(*series[k], "o-", markersize=4, label=label)
  if energy:
    axes[2].set(xlabel="step", ylabel="energy kept",
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


def _ranks_figure(plt, decision):
  """A rank policy's chosen ranks per layer against the uniform ratio's."""
  names = list(decision["layers"])
  rows = [decision["layers"][n] for n in names]
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
  x = range(len(names))
  ax.plot(x, [r["uniform_rank"] / r["full_rank"] for r in rows], "k--",
          marker="o", markersize=3, label="uniform ratio")
  ax.plot(x, [r["rank"] / r["full_rank"] for r in rows], marker="o",
          markersize=4, label=f"{decision['policy']} policy")
  ax.set_xticks(list(x), [n.replace("/kernel", "") for n in names],
                rotation=90, fontsize=7)
  ax.set(ylabel="rank / full rank", ylim=(0, 1.05),
         title=f"ranks decided at step {decision['step'] + 1}:"
               f" {100 * decision['macs_reduction']:.1f}% fewer MACs")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
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
  summary = (json.loads((workdir / "summary.json").read_text())
             if (workdir / "summary.json").is_file() else None)
  if (workdir / "metrics.jsonl").is_file():
    figures.append(("training.png", lambda: _training_figure(
        plt, read_metrics(workdir / "metrics.jsonl"), summary)))
  report = (json.loads((workdir / "compact_report.json").read_text())
            if (workdir / "compact_report.json").is_file() else None)
  if report and report["layers"]:  # a compact model trained directly has none
    figures.append(("layers.png", lambda: _layers_figure(plt, report)))
  if (workdir / "rank_decision.json").is_file():
    figures.append(("ranks.png", lambda: _ranks_figure(plt, json.loads(
        (workdir / "rank_decision.json").read_text()))))
  for name, make in figures:
    out.mkdir(exist_ok=True)
    fig = make()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    written.append(out / name)
  return written
