"""FairPrune on the demo in other regimes, and how well its second-order model predicts the damage.

    python -m bench.fairprune_regimes [--settings=NAME,...] [--seeds=0,1,2] [--check]
        [--root=workdir/fairprune_regimes] [--out=bench/results/fairprune_regimes.json]

Two measurements for README "Demo results" (design.md section 2), all on CPU in-process through
``fairjax.pipeline`` (one dense model per setting and seed, trained or restored in
``<root>/<setting>_s<seed>/dense``, FairPrune in ``.../prune``):

* ``--check``: for the demo config (seed 0) and the ``wide_fc`` setting, the weights of
  FairPrune's FIRST step are zeroed and each group's actual change of the mean cross-entropy is
  compared with what the saliency's model predicts (``sum 1/2 theta^2 h_g``, the OBD term) and
  with the first-order term ``-sum theta g_g`` that OBD drops (per-group gradients do not vanish
  at a model trained on the pooled loss). Train and validation splits.
* the settings of ``SETTINGS`` (demo overrides), for each seed: dense and pruned test accuracy,
  per-group accuracy, Eodd (sum convention) and its reduction, the chosen step and sparsity.

Writes one JSON (atomically) with the environment, every record and the per-setting mean ± std.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import app, flags, logging

_SETTINGS = flags.DEFINE_list("settings", [], "Names from SETTINGS ('' = all).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed and data.seed).")
_CHECK = flags.DEFINE_bool("check", False, "Run the first-step prediction check instead.")
_ROOT = flags.DEFINE_string("root", "workdir/fairprune_regimes", "Parent of the workdirs.")
_OUT = flags.DEFINE_string("out", "", "JSON ('' = bench/results/fairprune_regimes[_check].json).")

# train.epochs=10: the demo's dense training when these settings were measured (README).
_EVAL = {"data.num_validation": 2000, "data.num_test": 4000, "train.epochs": 10}
# FairPrune on the hidden layer only: 1024 units give fc0 a 2.097M-weight kernel (of the model's
# 2.107M parameters), the analogue of VGG's big classifier layers; fine steps (0.025% of fc0,
# ~520 weights).
_WIDE = {
  **_EVAL,
  "model.kwargs.hidden": 1024,
  "prune.exclude_layers": ("conv0", "conv1", "fc1"),
  "prune.beta": 0.5,
  "prune.step_fraction": 0.00025,
  "prune.max_steps": 40,
  "prune.patience": 40,
}
# The wide-fc setting with half dark skin in the validation and test splits (training keeps
# data.minority_fraction).
_EVAL50 = {**_WIDE, "data.eval_minority_fraction": 0.5}
SETTINGS: dict[str, dict[str, Any]] = {
  "demo": dict(_EVAL),
  "wide_fc": dict(_WIDE),
  # A light-only colour cue (data.color_cue) and a larger, closer dark group.
  "wide_fc_f40_c45_cue10": {
    **_WIDE,
    "data.minority_fraction": 0.4,
    "data.minority_contrast": 0.45,
    "data.color_cue": 0.1,
  },
  "wide_fc_f40_c50_cue15": {
    **_WIDE,
    "data.minority_fraction": 0.4,
    "data.minority_contrast": 0.5,
    "data.color_cue": 0.15,
  },
  "wide_fc_f35_c55_cue15": {
    **_WIDE,
    "data.minority_fraction": 0.35,
    "data.minority_contrast": 0.55,
    "data.color_cue": 0.15,
  },
  "wide_fc_f45_c45_cue10": {
    **_WIDE,
    "data.minority_fraction": 0.45,
    "data.minority_contrast": 0.45,
    "data.color_cue": 0.1,
  },
  "wide_fc_f40_c50_cue10": {
    **_WIDE,
    "data.minority_fraction": 0.4,
    "data.minority_contrast": 0.5,
    "data.color_cue": 0.1,
  },
  # Group-balanced evaluation splits (_EVAL50), so that each accuracy point of the light group
  # costs half a point overall.
  "wide_fc_eval50_f30_c55": {
    **_EVAL50,
    "data.minority_fraction": 0.3,
    "data.minority_contrast": 0.55,
  },
  # ... plus a light-only colour cue and, on dark skin, the hue of a random class
  # (data.minority_color_noise): a feature the model learns from the light group that misleads
  # the dark group.
  "wide_fc_eval50_f40_decoy20": {
    **_EVAL50,
    "data.minority_fraction": 0.4,
    "data.minority_contrast": 0.57,
    "data.color_cue": 0.2,
    "data.minority_color_noise": 0.2,
  },
  # A small gap whose light-side part is a light-only colour cue: dark lesions have MORE
  # relative contrast than light ones (0.75 vs U(0.45, 0.70)).
  "wide_fc_eval50_f30_c75_cue10": {
    **_EVAL50,
    "data.minority_fraction": 0.3,
    "data.minority_contrast": 0.75,
    "data.color_cue": 0.1,
  },
}


def _config(overrides: dict[str, Any], seed: int):
  from fairjax.config import load_config_file, validate_config

  config = load_config_file("configs/demo.py")
  for key, value in {**overrides, "seed": seed, "data.seed": seed}.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  validate_config(config)
  return config


def _dense(config, workdir: str):
  from fairjax import pipeline

  data, model = pipeline.load(config, workdir)
  return (data, model) + pipeline.dense_model(config, model, data, workdir)


def _run_setting(name: str, seed: int) -> dict[str, Any]:
  from fairjax import pipeline

  config = _config(SETTINGS[name], seed)
  root = os.path.join(_ROOT.value, f"{name}_s{seed}")
  t0 = time.perf_counter()
  data, model, dense, dense_val, dense_test, roles = _dense(config, os.path.join(root, "dense"))
  t1 = time.perf_counter()
  r = pipeline.prune_run(
    config,
    model,
    data,
    dense,
    dense_val,
    dense_test,
    roles,
    os.path.join(root, "prune"),
    plots=False,
  )
  d, p = r["dense"], r["pruned"]
  return {
    "setting": name,
    "seed": seed,
    "overrides": dict(SETTINGS[name]),
    "dense_accuracy": d["accuracy"],
    "pruned_accuracy": p["accuracy"],
    "accuracy_drop": r["summary"]["accuracy_drop"],
    "dense_eodd": d["eodd"],
    "pruned_eodd": p["eodd"],
    "eodd_reduction": r["summary"]["eodd_reduction"],
    "dense_group_accuracy": d["group_accuracy"],
    "pruned_group_accuracy": p["group_accuracy"],
    "sparsity": p["sparsity"],
    "chosen_step": r["chosen_step"],
    "validation_steps": [
      {
        "step": s["step"],
        "sparsity": s["sparsity"],
        "accuracy": s["validation"]["accuracy"],
        "eodd": s["validation"]["eodd"],
        "group_accuracy": s["validation"]["group_accuracy"],
      }
      for s in r["steps"]
    ],
    "dense_seconds": t1 - t0,
    "prune_seconds": time.perf_counter() - t1,
  }


def _split_arrays(data, split: str, image_size: int):
  import jax.numpy as jnp

  from fairjax.data import pipeline as input_pipeline

  batches = list(
    input_pipeline.eval_batches(data.sources[split], batch_size=500, image_size=image_size)
  )
  valid = np.concatenate([b["valid"] for b in batches])
  return tuple(
    jnp.asarray(np.concatenate([b[k] for b in batches])[valid]) for k in ("image", "label", "group")
  )


def _check(name: str, seed: int) -> list[dict[str, Any]]:
  """Actual vs predicted per-group loss change of FairPrune's first step (module docstring)."""
  import jax
  import jax.numpy as jnp
  import optax

  from fairjax import masks, pipeline
  from fairjax.pruning import builtin, fairprune

  config = _config(SETTINGS[name], seed)
  data, model, dense, _, _, roles = _dense(
    config, os.path.join(_ROOT.value, f"{name}_s{seed}", "dense")
  )
  params = dense.params
  unpriv, priv = roles

  def group_loss(params, x, y, g, group):
    logits = model.apply({"params": params}, x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    w = (g == group).astype(loss.dtype)
    return jnp.sum(loss * w) / jnp.sum(w)

  loss_fn = jax.jit(group_loss, static_argnums=4)
  grad_fn = jax.jit(jax.grad(group_loss), static_argnums=4)

  def accuracy(params, x, y, g, group):
    pred = jnp.argmax(model.apply({"params": params}, x, train=False), -1)
    return float(jnp.mean((pred == y)[g == group]))

  # Exactly the pipeline's first step: saliency from step-1 group-balanced train batches.
  ctx = pipeline.context(config, model, data)
  diag = builtin.group_diag(ctx, dense, 1)
  sal = fairprune.saliency(
    params, diag, unprivileged=unpriv, privileged=priv, beta=config.prune.beta
  )
  mask0 = masks.init_mask(params, ctx.prunable)
  groups = (priv[0], unpriv)
  leaves = jax.tree.leaves

  def removed_by(mask):
    return jax.tree.map(
      lambda a, b, p: jnp.zeros(p.shape, bool) if a is None else a & ~b,
      mask0,
      mask,
      params,
      is_leaf=lambda x: x is None,
    )

  def effect(removed, x, y, g, grads, group):
    """Actual loss change of zeroing ``removed``, its OBD term and first-order term."""
    pruned = jax.tree.map(lambda p, r: jnp.where(r, 0.0, p), params, removed)
    first = sum(
      float(jnp.sum(jnp.where(r, -p * q, 0.0)))
      for p, q, r in zip(leaves(params), leaves(grads[group]), leaves(removed))
    )
    second = sum(
      float(jnp.sum(jnp.where(r, 0.5 * p * p * h[group], 0.0)))
      for p, h, r in zip(leaves(params), leaves(diag), leaves(removed))
    )
    actual = float(loss_fn(pruned, x, y, g, group) - loss_fn(params, x, y, g, group))
    return pruned, actual, second, first

  step_removed = removed_by(
    masks.prune_lowest(sal, mask0, config.prune.step_fraction, scope=config.prune.scope)
  )
  n_removed = int(sum(int(jnp.sum(r)) for r in leaves(step_removed)))
  records = []
  for split in ("train", "validation"):
    x, y, g = _split_arrays(data, split, config.data.image_size)
    grads = {group: grad_fn(params, x, y, g, group) for group in groups}
    for group in groups:
      pruned, actual, second, first = effect(step_removed, x, y, g, grads, group)
      records.append(
        {
          "setting": name,
          "seed": seed,
          "split": split,
          "ranking": config.prune.scope,
          "group": data.group_names[group],
          "weights_removed": n_removed,
          "actual_loss_change": actual,
          "obd_predicted": second,
          "first_order_term": first,
          "accuracy_before": accuracy(params, x, y, g, group),
          "accuracy_after": accuracy(pruned, x, y, g, group),
        }
      )
  # The same prediction for the k weights of lowest saliency over all prunable layers at once
  # (global ranking; x, y, g and grads are the validation split's from the loop's last pass):
  # one weight is predicted well; joint removal grows faster than the sum.
  for k in (1, 10, 100, n_removed):
    removed = removed_by(masks.prune_lowest(sal, mask0, k, scope="global"))
    for group in groups:
      _, actual, second, first = effect(removed, x, y, g, grads, group)
      records.append(
        {
          "setting": name,
          "seed": seed,
          "split": "validation",
          "group": data.group_names[group],
          "weights_removed": k,
          "ranking": "global",
          "actual_loss_change": actual,
          "first_plus_obd_predicted": first + second,
        }
      )
  return records


def _mean_std(values: list[float]) -> str:
  v = np.asarray(values, float)
  return f"{v.mean():.3f} ± {v.std():.3f}"


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from bench.common import environment
  from fairjax.checkpoint import write_json_atomic

  seeds = [int(s) for s in _SEEDS.value]
  if _CHECK.value:
    records = [r for name in ("demo", "wide_fc") for r in _check(name, seeds[0])]
    print(
      "| setting | split | group | weights removed | actual dLoss | OBD predicted "
      "| first-order term | accuracy before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
      if r["ranking"] == "global":
        continue
      print(
        f"| {r['setting']} | {r['split']} | {r['group']} | {r['weights_removed']} "
        f"| {r['actual_loss_change']:+.4f} | {r['obd_predicted']:+.4f} "
        f"| {r['first_order_term']:+.4f} | {r['accuracy_before']:.3f} -> "
        f"{r['accuracy_after']:.3f} |"
      )
    print(
      "\nJoint removal of the k lowest-saliency weights over all prunable layers (validation):\n"
    )
    print("| setting | group | k | actual dLoss | predicted (first order + OBD) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in records:
      if r["ranking"] == "global":
        pred = r["first_plus_obd_predicted"]
        ratio = r["actual_loss_change"] / pred if pred > 0 else float("nan")
        print(
          f"| {r['setting']} | {r['group']} | {r['weights_removed']} "
          f"| {r['actual_loss_change']:+.4f} | {pred:+.4f} | {ratio:.1f} |"
        )
    out = _OUT.value or "bench/results/fairprune_regimes_check.json"
    write_json_atomic(out, {"environment": environment(), "records": records})
    print(f"wrote {out}")
    return

  names = _SETTINGS.value or [n for n in SETTINGS if n != "demo"]
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    raise app.UsageError(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
  records = []
  for name in names:
    for seed in seeds:
      r = _run_setting(name, seed)
      records.append(r)
      print(
        f"{name} seed {seed}: acc {r['dense_accuracy']:.3f} -> {r['pruned_accuracy']:.3f}, "
        f"Eodd {r['dense_eodd']:.3f} -> {r['pruned_eodd']:.3f} "
        f"({r['eodd_reduction']:+.0%}), light {r['dense_group_accuracy']['light']:.3f} -> "
        f"{r['pruned_group_accuracy']['light']:.3f}, dark "
        f"{r['dense_group_accuracy']['dark']:.3f} -> {r['pruned_group_accuracy']['dark']:.3f}, "
        f"step {r['chosen_step']} [{r['dense_seconds']:.0f}+{r['prune_seconds']:.0f} s]",
        flush=True,
      )
  print(
    "\n| setting | acc drop | Eodd reduction | light acc change | dark acc change "
    "| per seed: Eodd reduction @ acc drop |"
  )
  print("|---|---|---|---|---|---|")
  summary = {}
  for name in names:
    rs = [r for r in records if r["setting"] == name]
    change = lambda g: [
      r["pruned_group_accuracy"][g] - r["dense_group_accuracy"][g]  # noqa: E731
      for r in rs
    ]
    summary[name] = {
      "accuracy_drop": _mean_std([r["accuracy_drop"] for r in rs]),
      "eodd_reduction": _mean_std([r["eodd_reduction"] for r in rs]),
      "light_change": _mean_std(change("light")),
      "dark_change": _mean_std(change("dark")),
    }
    per_seed = ", ".join(f"{r['eodd_reduction']:+.0%} @ {r['accuracy_drop']:.3f}" for r in rs)
    s = summary[name]
    print(
      f"| {name} | {s['accuracy_drop']} | {s['eodd_reduction']} | {s['light_change']} "
      f"| {s['dark_change']} | {per_seed} |"
    )
  out = _OUT.value or "bench/results/fairprune_regimes.json"
  write_json_atomic(
    out,
    {
      "environment": environment(),
      "seeds": seeds,
      "records": records,
      "summary": summary,
      "note": "test split, Eodd sum convention; mean ± population std over seeds",
    },
  )
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
