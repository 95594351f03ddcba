"""Data parallelism (fairjax.parallel): sharded over 8 host devices == one device.

JAX fixes its device count at start-up, so the 8-device checks run in ONE subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the ``eight_devices`` fixture: each
test's check is a section of its script, run and reported on its own, so one failing section
fails only its test); the multi-host tests start two processes with two devices each. Tiny
models and images keep each process to seconds of compute; most of the time is JAX start-up and
compilation, paid once per process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.cli_helpers import (
  REPO,
  TINY,
  assert_cli_error,
  cli_cmd,
  load_json,
  run_cli,
  run_in_process,
)


def _env(devices: int) -> dict:
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


# Runs each section of a JSON spec ({"params": globals, "sections": [[name, code], ...]}) in a
# fresh namespace and records "ok" or its traceback, rewriting the report after every section
# (so a crash leaves the finished ones).
_RUNNER = """
import json, sys, traceback
spec = json.load(open(sys.argv[1]))
report = {}
for name, code in spec["sections"]:
    try:
        exec(compile(code, f"<section {name}>", "exec"), {"__name__": name, **spec["params"]})
        report[name] = "ok"
    except BaseException:
        report[name] = traceback.format_exc()
    with open(sys.argv[2], "w") as f:
        json.dump(report, f)
"""


# Shared prelude: a tiny BN CNN, batches of 16 (2 per device), a replicated/sharded mesh.
_PRELUDE = """
    import jax, jax.numpy as jnp, numpy as np
    from fairjax import models, parallel, train, masks, snnl
    from fairjax.pruning import baselines, fairgrape, fairprune
    assert jax.device_count() == 8, jax.devices()
    dp = parallel.data_parallel(0)
    assert dp.num_devices == 8 and dp.active
    model = models.get_model("small_cnn", num_classes=3, width=4, hidden=8, use_bn=True)
    rng = np.random.default_rng(0)
    def make_batch(n=16):
        return {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
                "label": rng.integers(0, 3, n).astype(np.int32),
                "group": (np.arange(n) % 3 == 0).astype(np.int32)}
    batches = [make_batch() for _ in range(3)]
    def close(a, b, rtol, atol, what):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                       err_msg=what)
"""


# Three SGD steps of a BatchNorm CNN, batch 16 split 2 per device, vs the plain jitted step.
_TRAIN = """
    tx = train.make_optimizer("sgd", 0.1, momentum=0.9)
    s0 = train.create_train_state(model, jax.random.key(0, impl="rbg"), (8, 8, 3), tx)
    key = jax.random.key(1)
    ref = s0
    for b in batches:
        ref, ref_metrics = train.jit_train_step_no_donate(ref, b, key)
    step = dp.jit(train.train_step, batch_argnums=(1,), num_args=3, out_batch=(False, False))
    state = dp.replicate(s0)
    for b in batches:
        sharded = dp.shard_batch(b, "train.batch_size")
        assert len(sharded["image"].sharding.device_set) == 8
        state, metrics = step(state, sharded, key)
    # It really is data-parallel: the compiled step all-reduces across the 8 devices.
    assert "all-reduce" in step.lower(state, sharded, key).compile().as_text()
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
    close((ref.params, ref.batch_stats, ref.opt_state),
          (state.params, state.batch_stats, state.opt_state), 1e-5, 1e-6, "train state")
    np.testing.assert_allclose(float(ref_metrics["loss"]), float(metrics["loss"]), rtol=1e-6)
    # Evaluation: logits of a sharded batch gathered back equal the one-device logits.
    x = batches[0]["image"]
    logits = train.predict(state, [{"image": dp.shard_array(x, "train.eval_batch_size"),
                                    "label": batches[0]["label"], "group": batches[0]["group"]}])[0]
    # atol 1e-5: the two states differ by float32 rounding after three SGD steps, and on some
    # CPUs that reaches 1.2e-6 on a logit of 0.013 (measured on an AMD EPYC host).
    close(np.asarray(train.jit_eval_step(ref, {"image": x})), logits, 1e-5, 1e-5, "logits")
"""


# float64 scoring passes, sharded vs the host batch. It switches float64 on for the rest of the
# process, so it is the script's last section.
_SCORES = """
    import flax.linen as nn
    jax.config.update("jax_enable_x64", True)

    class Net(nn.Module):  # no dtype casts: float64 end to end (SmallCNN computes in float32)
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), name="conv0")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn0")(x))
            x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv1")(x))
            return nn.Dense(3, name="fc0")(x.reshape(x.shape[0], -1))

    model = Net()
    v = model.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 3)), train=False)
    v = jax.tree.map(lambda a: a.astype(jnp.float64), v)
    v = {**v, "batch_stats": jax.tree.map(lambda a: a + 0.1, v["batch_stats"])}
    b64 = [{**b, "image": b["image"].astype(np.float64)} for b in batches]
    mask = masks.init_mask(v["params"])
    kw = {"train": False}
    vs = dp.replicate(v)
    mask_s = dp.replicate(mask)
    def sharded():
        return [dp.shard_batch(b, "prune.batch_size") for b in b64]

    # FairPrune / OBD curvature, in chunks of 8 samples (each chunk split 1 per device).
    ref, ref_n = fairprune.average_group_diag(model, v, b64, num_groups=2, apply_kwargs=kw)
    out, out_n = fairprune.average_group_diag(model, vs, sharded(), num_groups=2,
                                              chunk_size=8, apply_kwargs=kw)
    np.testing.assert_array_equal(ref_n, out_n)
    close(ref, out, 1e-10, 1e-14, "per_group_diag")
    assert max(float(jnp.max(x)) for x in jax.tree.leaves(ref)) > 0

    layers = ("conv1",)
    ref = snnl.score_channels(model, v, b64, layers, apply_kwargs=kw)
    out = snnl.score_channels(model, vs, sharded(), layers, apply_kwargs=kw)
    close(ref, out, 1e-10, 1e-14, "snnl")

    ref = fairgrape.accumulate_importance(model, v, b64, mask, num_groups=2, apply_kwargs=kw)
    out = fairgrape.accumulate_importance(model, vs, sharded(), mask_s, num_groups=2,
                                          apply_kwargs=kw)
    close(ref, out, 1e-10, 1e-14, "fairgrape")

    for fn in (baselines.snip_scores, baselines.obd_scores):
        score = lambda vv, mm: (lambda x, y: fn(model, vv, x, y, mm, apply_kwargs=kw))
        ref = baselines.accumulate_scores(score(v, mask), b64)
        out = baselines.accumulate_scores(score(vs, mask_s), sharded())
        close(ref, out, 1e-10, 1e-14, fn.__name__)

    # A batch that does not split over 8 devices: a clear error naming the config field ...
    try:
        dp.shard_batch(make_batch(12), "prune.batch_size")
        raise AssertionError("no error")
    except ValueError as e:
        assert "config.prune.batch_size=12" in str(e) and "8 devices" in str(e), e
    # ... or, for a last partial batch, the whole batch on every device.
    part = dp.shard_batch(make_batch(12), "prune.batch_size", uneven="replicate")
    assert part["image"].sharding.is_fully_replicated
"""


FAST = ["--config.train.epochs=2", "--config.prune.max_steps=2"]

# The tiny FairPrune demo run on 8 devices, through the CLI's code path in the 8-device process
# (tests/cli_helpers.run_in_process); test_cli_on_8_devices_and_2_hosts_... compares its files.
_CLI = """
    from tests.cli_helpers import TINY, run_in_process
    res = run_in_process(WORKDIR, *TINY, *FAST, "--config.prune.curvature_chunk_size=8")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "data parallel: 8 devices" in res.stderr, res.stderr[-4000:]
"""

# A curvature chunk that does not split over the 8 devices: the CLI's one-line error, before
# anything is computed.
_CHUNK_ERROR = """
    import os
    from tests.cli_helpers import TINY, assert_cli_error, run_in_process
    res = run_in_process(CHUNK_WORKDIR, *TINY, *FAST, "--config.prune.curvature_chunk_size=4")
    assert_cli_error(res, "config.prune.curvature_chunk_size=4", "divisible by the 8")
    assert not os.path.exists(os.path.join(CHUNK_WORKDIR, "checkpoints"))
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """ONE process with 8 host devices runs every 8-device check (JAX start-up and the shared
  compiled programs paid once); each test then reads its own section's outcome. The float64
  section goes last: it switches float64 on for the rest of the process."""
  tmp = tmp_path_factory.mktemp("eight_devices")
  params = {"WORKDIR": str(tmp / "d8"), "CHUNK_WORKDIR": str(tmp / "chunk"), "FAST": FAST}
  prelude = textwrap.dedent(_PRELUDE)
  sections = [
    (name, prelude + textwrap.dedent(code))
    for name, code in (
      ("train", _TRAIN),
      ("cli", _CLI),
      ("chunk_error", _CHUNK_ERROR),
      ("scores", _SCORES),
    )
  ]
  spec, report = tmp / "sections.json", tmp / "report.json"
  spec.write_text(json.dumps({"params": params, "sections": sections}))
  res = subprocess.run(
    [sys.executable, "-c", _RUNNER, str(spec), str(report)],
    env=_env(8),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  outcomes = json.loads(report.read_text()) if report.exists() else {}
  return {"outcomes": outcomes, "stderr": res.stderr, **params}


def _assert_section_ok(eight_devices: dict, name: str) -> None:
  outcome = eight_devices["outcomes"].get(name)
  if outcome is None:
    outcome = "the section never ran:\n" + eight_devices["stderr"][-4000:]
  assert outcome == "ok", outcome


def test_train_step_on_8_devices_equals_one_device(eight_devices):
  """Three SGD steps of a BatchNorm CNN, batch 16 split 2 per device, vs the plain jitted step.

  Tolerance rtol 1e-5 / atol 1e-6 (float32): the sharded step sums the gradient and the
  BatchNorm statistics as 8 partial sums plus an all-reduce instead of one sum, which changes
  rounding (measured max abs difference 2.6e-7 on these leaves), nothing else.
  """
  _assert_section_ok(eight_devices, "train")


def test_scoring_passes_sharded_equal_unsharded(eight_devices):
  """per_group_diag (chunked), SNNL, FairGRAPE importance, SNIP and OBD in float64: the sharded
  batch gives the host batch's result to 1e-10 (only the summation order differs)."""
  _assert_section_ok(eight_devices, "scores")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_feed_their_own_rows():
  """Multi-host on one machine: 2 processes x 2 CPU devices (jax.distributed, gloo). Each
  process feeds its half of the global batch; the train step, per_group_diag and OBD (also in
  chunks, prune.curvature_chunk_size) equal the single-device result that each process also
  computes locally."""
  port = _free_port()
  code = textwrap.dedent("""
      import sys, jax
      pid = int(sys.argv[1])
      from fairjax import parallel
      assert parallel.initialize_distributed(f"127.0.0.1:{sys.argv[2]}", 2, pid)
      import jax.numpy as jnp, numpy as np
      from fairjax import curvature, models, train
      assert jax.process_count() == 2 and jax.device_count() == 4
      dp = parallel.data_parallel(0)
      assert dp.num_devices == 4
      rows = dp._local_rows(16)
      assert (rows.start, rows.stop) == (8 * pid, 8 * pid + 8), rows
      model = models.get_model("small_cnn", num_classes=3, width=4, hidden=8)
      rng = np.random.default_rng(0)  # the same global batch in both processes
      b = {"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 3, 16).astype(np.int32),
           "group": (np.arange(16) % 3 == 0).astype(np.int32)}
      tx = train.make_optimizer("sgd", 0.1, momentum=0.9)
      s0 = train.create_train_state(model, jax.random.key(0, impl="rbg"), (8, 8, 3), tx)
      ref, _ = train.jit_train_step_no_donate(s0, b, jax.random.key(1))
      ref_diag = curvature.per_group_diag(model, s0.variables(), b["image"], b["label"],
                                          b["group"], num_groups=2, apply_kwargs={"train": False})
      ref_host = jax.device_get((ref.params, ref_diag))
      step = dp.jit(train.train_step, batch_argnums=(1,), num_args=3, out_batch=(False, False))
      gb = dp.shard_batch(b, "train.batch_size")
      assert not gb["image"].is_fully_addressable
      state, _ = step(dp.replicate(s0), gb, dp.replicate(jax.random.key(1)))
      diag = curvature.per_group_diag(model, dp.replicate(s0.variables()), gb["image"],
                                      gb["label"], gb["group"], num_groups=2,
                                      apply_kwargs={"train": False})
      for x, y in zip(jax.tree.leaves(ref_host), jax.tree.leaves((state.params, diag))):
          np.testing.assert_allclose(x, parallel.to_host(y), rtol=1e-5, atol=1e-6)
      # Bounded-memory curvature across hosts: chunks of 8 rows of the global batch (2 per
      # device), for per_group_diag and for OBD (prune.curvature_chunk_size), equal the
      # unchunked single-device results.
      from fairjax import masks
      from fairjax.pruning import baselines
      chunked = curvature.per_group_diag(model, dp.replicate(s0.variables()), gb["image"],
                                         gb["label"], gb["group"], num_groups=2, chunk_size=8,
                                         apply_kwargs={"train": False})
      mask = masks.init_mask(s0.params)
      ref_obd = jax.device_get(baselines.obd_scores(
          model, s0.variables(), b["image"], b["label"], mask, apply_kwargs={"train": False}))
      obd = baselines.obd_scores(model, dp.replicate(s0.variables()), gb["image"], gb["label"],
                                 dp.replicate(mask), apply_kwargs={"train": False}, chunk_size=8)
      for x, y in zip(jax.tree.leaves((ref_host[1], ref_obd)), jax.tree.leaves((chunked, obd)),
                      strict=True):
          np.testing.assert_allclose(x, parallel.to_host(y), rtol=1e-5, atol=1e-7)
      logits = jax.jit(lambda x: x * 2.0)(gb["image"])  # per-sample output, split over hosts
      np.testing.assert_array_equal(parallel.to_host(logits), b["image"] * 2.0)
      print("MULTIHOST_OK", pid)
  """)
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", code, str(pid), str(port)],
      env=_env(2),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pid in range(2)
  ]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=300))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for pid, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f"MULTIHOST_OK {pid}" in out, err[-4000:]


def _cli(workdir, devices, *extra):
  return run_cli(workdir, *TINY, *FAST, *extra, env=_env(devices))


def _cli_two_processes(workdir):
  """The CLI as 2 processes x 2 CPU devices on this machine (jax.distributed over localhost)."""
  port = _free_port()
  cmd = cli_cmd(
    workdir,
    *TINY,
    *FAST,
    "--config.prune.curvature_chunk_size=8",
    f"--coordinator_address=127.0.0.1:{port}",
    "--num_processes=2",
  )
  procs = [
    subprocess.Popen(
      cmd + [f"--process_id={pid}"],
      cwd=REPO,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pid in range(2)
  ]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert "data parallel: 4 devices (cpu) in 2 process(es)" in outs[0][1]


def _one_device_run(workdir: str) -> str:
  """The 1-device run's stderr: in-process when this process has one CPU device (the usual
  case; no JAX start-up, and the CLI's code path), else a 1-device subprocess."""
  import jax

  overrides = (*TINY, *FAST, "--config.prune.curvature_chunk_size=8")
  if jax.device_count() == 1 and jax.default_backend() == "cpu":
    res = run_in_process(workdir, *overrides)
  else:
    res = run_cli(workdir, *overrides, env=_env(1))
  assert res.returncode == 0, res.stderr[-4000:]
  return res.stderr


def test_cli_on_8_devices_and_2_hosts_gives_the_one_device_results(eight_devices, tmp_path):
  """The tiny FairPrune demo run (train, evaluate, curvature in chunks of 8, prune) on 1 device,
  on 8 (in the ``eight_devices`` process), and as 2 processes x 2 devices (two real CLI
  processes): identical results.json metrics and masks, params equal to float32 rounding.

  Metrics and masks are compared EXACTLY: they are discrete functions of params that differ by
  ~1e-7 relative. A prediction or a pruning rank sitting on that knife edge would flip them;
  none does in this run, and a flip would be worth a look rather than a looser test.
  """
  from fairjax import checkpoint

  _assert_section_ok(eight_devices, "cli")  # also: it logged "data parallel: 8 devices"
  runs = {}
  workdir = str(tmp_path / "d1")
  assert "data parallel" not in _one_device_run(workdir)
  runs[1] = (workdir, load_json(workdir))
  workdir = eight_devices["WORKDIR"]
  runs[8] = (workdir, load_json(workdir))
  workdir = str(tmp_path / "hosts")
  _cli_two_processes(workdir)
  runs["hosts"] = (workdir, load_json(workdir))
  a = runs[1][1]
  for b in (runs[8][1], runs["hosts"][1]):
    for key in ("dense", "pruned", "steps", "summary", "chosen_step"):
      assert a[key] == b[key], key
  assert a["steps"][-1]["sparsity"] > 0
  import jax

  items = []
  for workdir, _ in runs.values():
    store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, "prune"))
    # The 1-device items are the templates: they put the other runs' arrays on this process's
    # one device (orbax refuses a template-less restore onto another device topology).
    like = {"params": None, "mask": None} if not items else items[0]
    items.append(store.restore(store.latest_step(), like))
    store.close()
  for other in items[1:]:
    for x, y in zip(jax.tree.leaves(items[0]["mask"]), jax.tree.leaves(other["mask"])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(items[0]["params"]), jax.tree.leaves(other["params"])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_cli_device_mismatch_fails_fast(tmp_path):
  """The real CLI on 8 devices: a batch that does not split over them is a one-line error,
  exit code 2, before anything is computed."""
  res = _cli(str(tmp_path), 8, "--config.train.batch_size=12")
  assert_cli_error(res, "config.train.batch_size=12", "divisible by the 8")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_curvature_chunk_mismatch_on_8_devices_fails_fast(eight_devices):
  """prune.curvature_chunk_size=4 on 8 devices: the CLI's one-line error (in the 8-device
  process, through the CLI's code path), nothing computed."""
  _assert_section_ok(eight_devices, "chunk_error")


def test_more_devices_than_the_process_has_fails_fast(tmp_path):
  """config.parallel.num_devices above this process's device count (1 CPU device in a plain
  test run): the CLI's one-line error naming the count, nothing computed."""
  import jax

  n = jax.local_device_count()
  res = run_in_process(str(tmp_path), *TINY, *FAST, f"--config.parallel.num_devices={n + 1}")
  assert_cli_error(
    res, f"config.parallel.num_devices={n + 1}", f"has {n} {jax.default_backend()} device"
  )
  assert not os.path.exists(tmp_path / "checkpoints")


def test_host_chunks_give_the_whole_batch_curvature():
  """pipeline._host_chunks (prune.curvature_chunk_size): chunks of 6 out of batches of 16, the
  last chunk padded with group -1 rows, average to the unchunked per-group curvature."""
  import jax
  import jax.numpy as jnp

  from fairjax import models, pipeline
  from fairjax.pruning import fairprune

  model = models.get_model("small_cnn", num_classes=3, width=2, hidden=4)
  v = model.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 3)))
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
      "label": rng.integers(0, 3, 16).astype(np.int32),
      "group": (np.arange(16) % 3 == 0).astype(np.int32),
    }
    for _ in range(2)
  ]
  chunks = list(pipeline._host_chunks(iter(batches), 6))
  assert [len(c["group"]) for c in chunks] == [6] * 6
  assert (chunks[2]["group"][4:] == -1).all() and (chunks[2]["group"][:4] >= 0).all()
  ref, ref_n = fairprune.average_group_diag(model, v, batches, num_groups=2)
  out, out_n = fairprune.average_group_diag(model, v, chunks, num_groups=2)
  np.testing.assert_array_equal(ref_n, out_n)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)
