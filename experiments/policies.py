"""The rank-policy comparison in RESULTS.md: each policy against the uniform
ratio, paired by seed, with the compact models' measured latency.

A policy is *better* only if its top-1 is higher in every seed (the aim: by
at least a point at equal MACs), *worse* only if lower in every seed, else
not decided; its MACs cut is reported beside it (the energy policy's is its
own, the budget policy's the uniform ratio's), and higher top-1 with a MACs
cut more than half a point smaller is not called better (not equal cost). Latency:
``results/latency/<scale>.json`` (``experiments.policy_latency``).
"""

import json
import pathlib
import statistics

LATENCY_DIR = "latency"
POLICY_PREFIXES = ("lrpet_budget", "lrpet_energy")
AIM_PP = 1.0  # the aim: a point of top-1 at equal MACs
EQUAL_CUT_PP = 0.5  # MACs cuts within this many points count as equal


def policy_methods(groups) -> list[str]:
  return sorted(m for m in groups if m.startswith(POLICY_PREFIXES))


def label(method: str) -> str:
  if method == "lrpet_budget":
    return "budget policy (most energy at the uniform ratio's MACs)"
  return f"energy policy (each layer keeps {method[len('lrpet_energy'):]})"


def _reduction(record):
  final = record["final"]
  return 1 - final["final_macs"] / final["dense_macs"]


def _verdict(diffs, cut_gaps) -> str:
  """``diffs``: policy − uniform top-1 per seed (pp); ``cut_gaps``: policy −
  uniform MACs cut per seed (pp). Higher top-1 bought with a smaller MACs cut
  is said so: it is not a win at equal cost."""
  if len(diffs) < 2:
    return "not decided (one seed)"
  if all(d >= AIM_PP for d in diffs):
    v = f"better by at least {AIM_PP:g} point in every seed"
  elif all(d > 0 for d in diffs):
    v = "better in every seed, by less than a point in some"
  elif all(d < 0 for d in diffs):
    return "worse in every seed"
  else:
    return "not decided (the sign differs between seeds)"
  smaller = [g for g in cut_gaps if g < -EQUAL_CUT_PP]
  if smaller:
    v = (f"more accurate in every seed but with a smaller MACs cut in"
         f" {len(smaller)} of {len(cut_gaps)} (by {-max(smaller):.1f} to"
         f" {-min(smaller):.1f} points): not at equal cost")
  return v


def comparison(groups, method):
  """(per-seed rows, verdict) of ``method`` minus the uniform ``lrpet``."""
  uniform = {r["seed"]: r for r in groups.get("lrpet", [])}
  rows = []
  for r in groups[method]:
    u = uniform.get(r["seed"])
    if u is None:
      continue
    rows.append((r["seed"], u["final"]["final_accuracy"],
                 r["final"]["final_accuracy"], _reduction(u), _reduction(r)))
  diffs = [100 * (p - u) for _, u, p, _, _ in rows]
  cut_gaps = [100 * (cp - cu) for *_, cu, cp in rows]
  return rows, _verdict(diffs, cut_gaps)


def verdict(groups_by_scale) -> tuple[str, str]:
  """(finding, verdict) over every scale ({scale: groups}) with policy runs."""
  finding = ("A rank policy beats the paper's uniform ratio (ranks from the"
             " spectrum at the end of epoch 1)")
  parts = []
  for scale, groups in groups_by_scale.items():
    for method in policy_methods(groups):
      rows, v = comparison(groups, method)
      if rows:
        d = ", ".join(f"{100 * (p - u):+.2f}" for _, u, p, _, _ in rows)
        cut = ", ".join(f"{100 * c:.1f}%" for *_, c in rows)
        parts.append(f"{label(method)} at {scale}: {v} ({d} pp; {cut} fewer"
                     " MACs)")
  return finding, ("; ".join(parts) if parts
                   else "not tested (no rank-policy runs)")


def latency_lines(results_dir: pathlib.Path, scale: str) -> list[str]:
  path = pathlib.Path(results_dir) / LATENCY_DIR / f"{scale}.json"
  if not path.is_file():
    return []
  record = json.loads(path.read_text())
  ms = record["ms"]
  lines = [f"Latency of the compact models' ranks: `python -m"
           f" experiments.policy_latency --scale={scale}`, {record['model']},"
           f" batch {record['batch']}, float32, BatchNorm folded, on a"
           f" {record['device']} ({record['backend']}); medians of"
           f" {record['repeats']} interleaved calls in one run (the weights"
           " do not matter, so each rank set is timed on one random init).",
           "", "| ranks | compact ms | × dense | tuned ms | × dense |",
           "|---|---|---|---|---|",
           f"| dense | {ms['dense']:.1f} | 1.00 | | |"]
  for name in record["sets"]:
    c, t = ms[f"{name} compact"], ms[f"{name} tuned"]
    lines.append(f"| {name} | {c:.1f} | {ms['dense'] / c:.2f} | {t:.1f} |"
                 f" {ms['dense'] / t:.2f} |")
  return lines + [""]


def section_lines(groups, results_dir, scale, plots_dir) -> list[str]:
  methods = policy_methods(groups)
  if not methods or "lrpet" not in groups:
    return []
  lines = ["### Rank policies against the uniform ratio", "",
           "The ranks are decided once, from each layer's BN-rectified"
           " spectrum at the end of epoch 1 (`config.rank_policy`), and fixed"
           " from then on; everything else is the `lrpet` arm. Paired by"
           " seed with the uniform ratio (`lrpet`).", "",
           "| policy | seed | uniform top-1 % | policy top-1 % | difference |"
           " fewer MACs, uniform | fewer MACs, policy |",
           "|---|---|---|---|---|---|---|"]
  for method in methods:
    rows, v = comparison(groups, method)
    for seed, u, p, cu, cp in rows:
      lines.append(f"| {label(method)} | {seed} | {100 * u:.2f} |"
                   f" {100 * p:.2f} | {100 * (p - u):+.2f} | {100 * cu:.1f}%"
                   f" | {100 * cp:.1f}% |")
    diffs = [100 * (p - u) for _, u, p, _, _ in rows]
    mean = f"mean {statistics.mean(diffs):+.2f} pp; " if diffs else ""
    lines.append(f"| **{label(method)}** | | | | {mean}**{v}** | | |")
  lines += [""] + latency_lines(results_dir, scale)
  plot = _plot_ranks(groups, methods, plots_dir, scale)
  if plot:
    lines += [f"![{plot.stem}](plots/{plot.name})", ""]
  return lines


def _plot_ranks(groups, methods, plots_dir, scale):
  """Each policy's chosen rank per layer (seed 0) against the uniform one."""
  decisions = {m: groups[m][0].get("rank_decision") for m in methods}
  decisions = {m: d for m, d in decisions.items() if d}
  if not decisions:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  first = next(iter(decisions.values()))
  names = list(first["layers"])
  fig, ax = plt.subplots(figsize=(max(7, 0.4 * len(names) + 2), 4.5))
  x = range(len(names))
  ax.plot(x, [first["layers"][n]["uniform_rank"] / first["layers"][n][
      "full_rank"] for n in names], "k--", marker="o", markersize=3,
          label="uniform ratio")
  for method, d in decisions.items():
    ax.plot(x, [d["layers"][n]["rank"] / d["layers"][n]["full_rank"]
                for n in names], marker="o", markersize=4,
            label=f"{label(method)}, seed {groups[method][0]['seed']}")
  ax.set_xticks(list(x), [n.replace("/kernel", "") for n in names],
                rotation=90, fontsize=7)
  ax.set(ylabel="rank / full rank", title="Chosen ranks per layer")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  plots_dir.mkdir(parents=True, exist_ok=True)
  path = plots_dir / f"{scale}_rank_policies.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
