"""RESULTS.md's section for a ViT scale of ``configs/claims.py``: the authors'
ViT, dense against LRPET on its MLP layers, paired by seed, with a verdict
against the authors' own gap.

The only numbers typed here are the authors' (``THEIRS``), quoted from the
README of ``ImageClassification/VisionTransformer/`` in canyyang/LRPET.
"""

import math
import statistics

# Their README: CIFAR-10 top-1 %, 100 epochs (of 3 passes) of their recipe.
THEIRS = {"dense": 93.54, "lrpet": 92.96, "macs_cut": 27.4, "params_cut": 26.8,
          "epochs": 100}
# Two-sided 95 % Student t quantiles by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
       8: 2.306, 9: 2.262}


def is_vit(records) -> bool:
  return records[0]["configs"][-1]["model"].startswith("vit")


def _accuracy(record):
  return 100 * record["final"]["final_accuracy"]


def paired_gaps(groups):
  """{seed: LRPET − dense top-1, in points}, over the seeds both ran."""
  dense = {r["seed"]: _accuracy(r) for r in groups.get("dense", [])}
  lrpet = {r["seed"]: _accuracy(r) for r in groups.get("lrpet", [])}
  return {s: lrpet[s] - dense[s] for s in sorted(set(dense) & set(lrpet))}


def verdict(gaps):
  """Their gap (−0.58 pt) against the 95 % interval of the mean paired gap."""
  theirs = THEIRS["lrpet"] - THEIRS["dense"]
  d = list(gaps.values())
  if len(d) < 2:
    return f"not decided (needs two seeds; have {len(d)})"
  mean, sd = statistics.mean(d), statistics.stdev(d)
  half = T95.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d))
  low, high = mean - half, mean + half
  where = (f"mean {mean:+.2f} pt, 95 % interval [{low:+.2f}, {high:+.2f}]"
           f" over {len(d)} seeds; theirs {theirs:+.2f} pt")
  if low <= theirs <= high:
    return f"consistent with theirs ({where})"
  if high < theirs:
    return f"LRPET loses more than in their table ({where})"
  return f"LRPET loses less than in their table ({where})"


def _recipe(config):
  aug = [name for name, on in (
      ("AutoAugment", config.get("auto_augment")),
      (f"random erasing {config.get('random_erasing')}",
       config.get("random_erasing")),
      (f"CutMix/Mixup p {config.get('mix_prob')}", config.get("mix_prob")),
      (f"repeated augmentation {config.get('repeated_augmentation')}",
       config.get("repeated_augmentation", 1) > 1)) if on]
  return (f"{config['optimizer']} lr {config['learning_rate']} weight decay"
          f" {config['weight_decay']}, {config['lr_schedule']} schedule with"
          f" {config['warmup_epochs']} warm-up epoch(s), label smoothing"
          f" {config['label_smoothing']}, crop + flip"
          + (", " + ", ".join(aug) if aug else
             " only (none of their other augmentations)"))


def lines(scale, records, main_table, plots, command):
  """The section's markdown lines; ``main_table``, ``plots`` and LRPET's
  ``command`` are the report's (the same table as every scale's)."""
  by_method = {}
  for r in records:
    by_method.setdefault(r["run"].rsplit("_seed", 1)[0], []).append(r)
  lrpet = by_method.get("lrpet", records)[0]
  config = lrpet["configs"][-1]
  seeds = sorted({r["seed"] for r in records})
  devices = sorted({p["device"] for r in records for p in r["phases"]})
  commits = sorted({c[:12] for r in records for c in r["commits"] if c})
  gaps = paired_gaps(by_method)
  out = [f"## Scale `{scale}`: the authors' ViT, dense against LRPET", "",
         f"- Model `{config['model']}` (their `models/vit.py`), data"
         f" `{config['dataset']}` (JPEG re-encoded), training examples"
         f" {config['train_subset'] or 'all'}, test examples"
         f" {config['test_subset'] or 'all'} (each seed draws its subsets;"
         " both methods of a seed see the same ones).",
         f"- {config['num_epochs']} epochs of {lrpet['steps_per_epoch']}"
         f" steps, batch {config['batch_size']}: {_recipe(config)}.",
         f"- LRPET: the projection after AdamW once per epoch on the"
         f" `{config['project_layers']}` layers, ranks for"
         f" {100 * config['macs_reduction']:.1f} % fewer MACs in the Dense"
         " layers (their FLOPs cut).",
         f"- Seeds: {', '.join(map(str, seeds))}. Device(s):"
         f" {', '.join(devices)}. Code: commit(s) {', '.join(commits)}.",
         f"- LRPET's command: `{command}`.", ""]
  out += [row.replace(" + BN rectification", "; no BatchNorm to rectify")
          for row in main_table]
  out += ["", "MACs count every Dense layer and attention's two products"
          " (docs/transformers.md). ¹ Mean over the runs that trained in"
          " one process; the runs shared the 2-core machine with other work,"
          " so wall times compare loosely.", ""]
  out += ["### LRPET minus dense, paired by seed", ""]
  if gaps:
    out += [f"- Per seed: {', '.join(f'{d:+.2f} pt (seed {s})' for s, d in gaps.items())}.",
            f"- Against the authors' table ({THEIRS['lrpet']} vs"
            f" {THEIRS['dense']}, {THEIRS['lrpet'] - THEIRS['dense']:+.2f} pt"
            f" after {THEIRS['epochs']} epochs of their whole recipe):"
            f" **{verdict(gaps)}**.",
            f"- What this budget can say: {config['num_epochs']} short epochs"
            " on a subset, far from their 300 passes over 50,000 images;"
            " the gap is measured under an identical budget for both"
            " methods, and says nothing about the absolute accuracy they"
            " report. The GPU arm (`vit_gpu`, their whole recipe) is"
            " `experiments/device_session.sh`'s third rung.", ""]
  else:
    out += ["- Needs dense and LRPET runs of the same seed.", ""]
  out += ["### Plots", ""] + plots + [""]
  return out
