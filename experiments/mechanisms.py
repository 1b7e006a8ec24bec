"""The mechanism findings in RESULTS.md, from ``results/mechanisms/*.json``.

Each finding gets a verdict from paired differences over seeds (a seed fixes
the trained model or the training run that both arms share):

- *supported*: every seed's difference favours the claim at every setting;
- *contradicted*: every seed's difference goes against it at every setting;
- *not decided*: anything else (with 3 seeds, one seed against the others is
  enough to withhold a verdict).

The mean ± sample std of the differences is given with each verdict.
"""

import json
import pathlib

import numpy as np

DIR = "mechanisms"


def _verdict(diffs: np.ndarray) -> str:
  """diffs > 0 favour the claim; any shape, seeds included."""
  if np.all(diffs > 0):
    return "supported"
  if np.all(diffs < 0):
    return "contradicted"
  return "not decided"


def _tally(diffs_per_setting, names) -> str:
  """The verdict over settings, naming the settings that support or
  contradict when they are mixed."""
  each = [_verdict(np.asarray(d)) for d in diffs_per_setting]
  if all(v == each[0] for v in each):
    return each[0]
  parts = [f"{v} at {', '.join(n for n, w in zip(names, each) if w == v)}"
           for v in ("supported", "contradicted", "not decided")
           if v in each]
  return "mixed: " + "; ".join(parts)


def _pm(values, scale=1.0, digits=4):
  values = np.asarray(values, np.float64) * scale
  std = values.std(ddof=1) if values.size > 1 else float("nan")
  return f"{values.mean():+.{digits}f} ± {std:.{digits}f}"


def bn_rectification_lines(record, plots_dir):
  runs = record["runs"]
  seeds = [r["seed"] for r in runs]
  ratios = record["ratios"]

  def value(run, ratio, variant, key):
    (row,) = [x for x in run["results"]
              if x["ratio"] == ratio and x["variant"] == variant]
    return row[key]

  dense_top1 = ", ".join(f"{100 * r['dense_top1']:.2f}%" for r in runs)
  lines = [
      "## Finding: BN rectification improves the low-rank approximation", "",
      "Measured without training (`python -m experiments.bn_rectification`):"
      f" trained dense {runs[0]['model']} models (seeds {seeds}; dense top-1"
      f" {dense_top1}) are"
      " projected once at each ratio, every convolution, with and without BN"
      " rectification. *Error*: the mean over layers of"
      " ‖BN(W∗x) − BN(P(W)∗x)‖ / ‖BN(W∗x)‖ on"
      f" {record['images']} training images (x: the layer's input in the"
      " dense model). *Top-1*: the projected model on the test subset, with"
      " the running BatchNorm statistics and with precise BN"
      f" ({record['bn_batches']} training batches). Differences: without −"
      " with rectification for the error (positive: rectification is more"
      " accurate), with − without for top-1 (percentage points); mean ±"
      " sample std over seeds.", "",
      "| ratio | energy transfer | error, with rect. | error, without |"
      " error diff | top-1 diff, running BN (pp) | top-1 diff, precise BN (pp) |"
      " verdict: error / top-1 (precise BN) |",
      "|---|---|---|---|---|---|---|---|"]
  err_diffs, run_diffs, precise_diffs = [], [], []
  settings = [f"{r}/ET {et}" for r in ratios for et in ("on", "off")]
  for ratio in ratios:
    for et, (on, off) in (("on", ("rect_et", "plain_et")),
                          ("off", ("rect", "plain"))):
      e_on = np.array([value(r, ratio, on, "mean_layer_error") for r in runs])
      e_off = np.array([value(r, ratio, off, "mean_layer_error")
                        for r in runs])
      t_run = np.array([value(r, ratio, on, "top1_running_bn")
                        - value(r, ratio, off, "top1_running_bn")
                        for r in runs])
      t_pre = np.array([value(r, ratio, on, "top1_precise_bn")
                        - value(r, ratio, off, "top1_precise_bn")
                        for r in runs])
      err_diffs.append(e_off - e_on)
      run_diffs.append(t_run)
      precise_diffs.append(t_pre)
      lines.append(
          f"| {ratio} | {et} | {e_on.mean():.4f} | {e_off.mean():.4f} |"
          f" {_pm(e_off - e_on)} | {_pm(t_run, 100, 2)} |"
          f" {_pm(t_pre, 100, 2)} | {_verdict(e_off - e_on)} /"
          f" {_verdict(t_pre)} |")
  verdicts = {
      "BatchNorm-output error": _tally(err_diffs, settings),
      "top-1 right after projection, running BN": _tally(run_diffs, settings),
      "top-1 right after projection, precise BN": _tally(precise_diffs,
                                                         settings)}
  lines += ["", "**Verdict** over the 8 settings (4 ratios × energy transfer"
            f" on/off), each from {len(seeds)} seeds:"]
  lines += [f"- {k}: **{v}**" for k, v in verdicts.items()]
  plot = _plot_bn(record, value, plots_dir)
  summary = (f"approximation error: {verdicts['BatchNorm-output error']};"
             " top-1 right after projection (precise BN):"
             f" {verdicts['top-1 right after projection, precise BN']}"
             " (one-shot projection of dense models trained without it)")
  return (lines + ["", f"![{plot.stem}](plots/{plot.name})", ""],
          ("BN rectification improves the low-rank approximation", summary))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path):
  for ax in fig.axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _plot_bn(record, value, plots_dir):
  plt = _pyplot()
  runs, ratios = record["runs"], record["ratios"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for variant, style in (("rect_et", "o-"), ("plain_et", "s--"),
                         ("rect", "^-"), ("plain", "v--")):
    err = [np.mean([value(r, q, variant, "mean_layer_error") for r in runs])
           for q in ratios]
    top = [100 * np.mean([value(r, q, variant, "top1_precise_bn")
                          for r in runs]) for q in ratios]
    ax1.plot(ratios, err, style, label=variant)
    ax2.plot(ratios, top, style, label=variant)
  ax1.set(xlabel="ratio", ylabel="mean BN-output error",
          title="approximation error (rect = BN rectification)")
  ax2.set(xlabel="ratio", ylabel="top-1 % (precise BN)",
          title="accuracy right after projection")
  return _save(plt, fig, plots_dir / "mechanism_bn_rectification.png")


def energy_transfer_lines(record, plots_dir):
  runs = record["runs"]
  seeds = sorted({r["seed"] for r in runs})
  by = {(r["seed"], r["energy_transfer"]): r for r in runs}
  n_proj = len([p for p in runs[0]["projections"]
                if p["grad_ratio"] is not None])
  scale = record["scale"]

  def median_ratio(run, k):
    return float(np.median(run["projections"][k]["grad_ratio"]))

  lines = [
      "## Finding: energy transfer alleviates the gradient vanishing that"
      " projection causes", "",
      "Measured during training (`python -m experiments.energy_transfer`):"
      f" LRPET on {scale['model']}, {scale['train_subset']} training images,"
      f" {scale['num_epochs']} epochs, ratio {scale['ratio']}, with and"
      " without energy transfer, same seed (data, order, augmentation, init)."
      f" Seeds {seeds}. *Gradient ratio*: per layer, the"
      f" mean gradient norm over the {record['window']} steps after a"
      f" projection over the {record['window']} steps before it; the table"
      " gives the median over the 19 projected layers (< 1: the gradients"
      " shrank). *Norm removed*: 1 − ‖P(W′)‖/‖W′‖, median over layers."
      " *Loss jump*: training loss on a fixed batch after − before the"
      " truncation.", "",
      "| projection (step) | grad ratio, ET | grad ratio, no ET | diff ET − no ET |"
      " norm removed, ET | norm removed, no ET | loss jump, ET | loss jump, no ET |"
      " verdict: vanishing / ET raises the ratio |",
      "|---|---|---|---|---|---|---|---|---|"]
  diffs, no_et = [], []
  for k in range(len(runs[0]["projections"])):
    step = runs[0]["projections"][k]["step"]
    et_runs = [by[(s, True)] for s in seeds]
    no_runs = [by[(s, False)] for s in seeds]
    rem = lambda rs: np.mean([np.median(r["projections"][k]["removed_norm"])
                              for r in rs])
    jump = lambda rs: _pm([r["projections"][k]["loss_jump"] for r in rs],
                          digits=3)
    if k < n_proj:
      r_et = np.array([median_ratio(r, k) for r in et_runs])
      r_no = np.array([median_ratio(r, k) for r in no_runs])
      diffs.append(r_et - r_no)
      no_et.append(r_no)
      cells = (f"{r_et.mean():.3f} | {r_no.mean():.3f} |"
               f" {_pm(r_et - r_no, digits=3)}")
      row_verdict = f"{_verdict(1 - r_no)} / {_verdict(r_et - r_no)}"
    else:
      cells, row_verdict = "— | — | — (no steps after it)", "—"
    lines.append(f"| {k + 1} ({step}) | {cells} | {rem(et_runs):.3f} |"
                 f" {rem(no_runs):.3f} | {jump(et_runs)} | {jump(no_runs)} |"
                 f" {row_verdict} |")
  names = [f"projection {k + 1}" for k in range(n_proj)]
  vanishing = _tally([1 - r for r in no_et], names)  # < 1 without ET
  alleviates = _tally(diffs, names)
  lines += ["", f"**Verdict** ({len(seeds)} seeds, {n_proj} projections"
            " with steps after them, median over layers):",
            f"- projection makes gradients vanish (no-ET ratio < 1): **{vanishing}**",
            f"- energy transfer raises the post/pre gradient ratio: **{alleviates}**"]
  plot = _plot_et(runs, seeds, by, plots_dir)
  summary = (f"{alleviates} (that energy transfer raises the gradient ratio);"
             f" projection makes gradients vanish without it: {vanishing}")
  return (lines + ["", f"![{plot.stem}](plots/{plot.name})", ""],
          ("Energy transfer alleviates the gradient vanishing of projection",
           summary))


def _plot_et(runs, seeds, by, plots_dir):
  plt = _pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for et, color in ((True, "C0"), (False, "C1")):
    for s in seeds:
      run = by[(s, et)]
      norms = np.asarray(run["grad_norms"])
      ax1.plot(np.median(norms / norms[:1].clip(1e-12), axis=1), color=color,
               alpha=0.6, label=f"{'ET' if et else 'no ET'}" if s == seeds[0]
               else None)
      ratios = [np.median(p["grad_ratio"]) for p in run["projections"]
                if p["grad_ratio"] is not None]
      ax2.plot(range(1, len(ratios) + 1), ratios, "o-", color=color,
               alpha=0.6, label=f"{'ET' if et else 'no ET'}" if s == seeds[0]
               else None)
  for p in runs[0]["projections"]:
    ax1.axvline(p["step"] - 1, color="grey", lw=0.5)
  ax1.set(xlabel="step", ylabel="median over layers of |grad| / |grad at step 0|",
          title="gradient norms (projections: grey lines)", yscale="log")
  ax2.axhline(1.0, color="grey", lw=0.5)
  ax2.set(xlabel="projection", ylabel="median post/pre gradient ratio",
          title="gradient ratio at each projection")
  return _save(plt, fig, plots_dir / "mechanism_energy_transfer.png")


def lines(results_dir: pathlib.Path, plots_dir: pathlib.Path
          ) -> tuple[list[str], list[tuple[str, str]]]:
  """(RESULTS.md lines, [(finding, verdict summary)]) for the mechanism
  findings that have results."""
  out, verdicts = [], []
  plots_dir.mkdir(parents=True, exist_ok=True)
  for name, render in (("bn_rectification", bn_rectification_lines),
                       ("energy_transfer", energy_transfer_lines)):
    path = pathlib.Path(results_dir) / DIR / f"{name}.json"
    if path.is_file():
      section, verdict = render(json.loads(path.read_text()), plots_dir)
      out += section
      verdicts.append(verdict)
  return out, verdicts
