"""Per-group diagonal curvature of the softmax cross-entropy, all groups in one pass.

(Or of the multi-label sigmoid binary cross-entropy, ``loss="sigmoid_binary_cross_entropy"``: see
the end of this docstring.)

The public entry point is :func:`per_group_diag`. For every group ``g`` it returns the diagonal
generalised Gauss-Newton matrix of that group's mean loss (design.md section 1)::

    diagGGN_g = (1/N_g) * sum_{n in g} sum_c (J_n^T f_{n,c})**2

where ``J_n`` is the Jacobian of sample ``n``'s logits w.r.t. the parameters and
``F_n = [f_{n,1} .. f_{n,K}]`` is a factor of the loss Hessian w.r.t. the logits,
``F_n F_n^T = H_n = diag(p_n) - p_n p_n^T``.

How it is computed (one forward, K backward "columns", no loop over groups):

* The model is applied to each sample under ``jax.vmap`` while ``flax.linen.intercept_methods``
  watches every ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Conv`` / ``nn.LayerNorm`` /
  ``nn.RMSNorm`` call. Each such call records its input (norms: the normalised input) and adds
  a zero "probe" to its output; the cotangent of that probe is the per-sample output cotangent.
  DenseGeneral (attention projections) is a Dense over its flattened contracted axes; over
  token axes a Dense weight is shared like a conv's, and norms need only ``D``-sized per-sample
  gradients (design.md section 1.12).
* Dense kernels use the identity ``sum_c (a ⊗ d_c)**2 = a**2 ⊗ sum_c d_c**2``: no per-sample
  gradient is ever materialised. Conv kernels need per-sample, per-column weight gradients
  (im2col patches times cotangents); these are computed in sample chunks so memory stays bounded.
* Grouped convs (``feature_group_count > 1``, kernel ``[*kernel_size, C_in / F, C_out]``) take
  the conv path per feature group (patches of the group's input channels times the group's
  output cotangents, one batched dot over the groups). Depthwise convs (one input channel per
  group, any channel multiplier) skip the patches: per kernel tap, the shifted input window
  times the cotangent, summed over positions, in one fused loop. Inside the pass their forward
  is also recomputed as shifted windows times kernel rows, because XLA:CPU lowers depthwise
  convolutions and above all their stride-2 input gradients slowly (bench/README.md).
* Every other parameter (BatchNorm scale/bias, custom layers, shared modules) takes the generic
  path: per-sample, per-column gradients from the same vmapped VJP, squared. It is exact for any
  Linen model, only slower for large unrecognised leaves.
* Per-sample contributions are weighted by ``1/N_g`` and summed by group with a one-hot matmul
  (a segment sum), so a group with no sample gets exactly zero.

Methods (``method=``):

* ``"exact"``: the symmetric square-root factor of ``H_n`` reduced to its rank ``C-1`` with a
  Householder reflection, so ``K = C-1`` columns (one column for binary tasks).
* ``"mc"``: ``K = num_samples`` sampled columns ``(p - e_y~)/sqrt(K)``, ``y~ ~ Cat(p)``.
  Unbiased for the GGN diagonal.
* ``"hutchinson"``: ``E_v[v * H_g v]`` with Rademacher probes and forward-over-reverse
  Hessian-vector products. Unbiased for the *Hessian* diagonal (also for non piecewise-linear
  activations) but very noisy; useful for large models, not for ranking single weights.
* ``"empirical_fisher"``: squared per-sample gradients at the true labels, ``(p - e_y)``.
  BIASED (it is not a curvature estimate away from a perfect fit); kept as a labelled option
  because some public re-implementations of FairPrune use it.

Estimator error, measured in float64 on the tiny conv/pool/dense CNN of tests/test_curvature.py
(7 samples, 3 groups), as the relative Frobenius error against the exact value, averaged over
draws:

============================  =====  =====  =====  =====
samples                       1      4      16     64
============================  =====  =====  =====  =====
MC vs exact GGN               0.90   0.40   0.20   0.12
============================  =====  =====  =====  =====

Hutchinson against the Hessian diagonal is off by 18.6x with 1 probe, 5.8x with 10 and 1.7x with
100. The empirical Fisher is 0.90 off the GGN at any sample count. design.md section 1 has similar
figures on another small CNN.

Samples whose group id is outside ``[0, num_groups)`` (e.g. ``-1`` for an unknown sensitive
attribute) contribute to no group.

Multi-label tasks (``loss="sigmoid_binary_cross_entropy"``, design.md section 1.10): the loss of a
sample is the SUM over its ``A`` attributes of the sigmoid binary cross-entropy, whose Hessian
w.r.t. the logits is ``diag(p (1 - p))``, ``p = sigmoid(z)``. ``"exact"`` then takes ``K = A``
columns ``sqrt(p_a (1 - p_a)) e_a``; ``"mc"`` samples ``y~_a ~ Bernoulli(p_a)`` independently per
attribute and takes ``(p - y~)/sqrt(K)`` (the gradient of the sampled loss; unbiased, since
``E[(p - y~)(p - y~)^T] = diag(p (1 - p))``); ``"empirical_fisher"`` takes ``p - y`` at the true
labels; ``"hutchinson"`` differentiates the summed loss itself.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import linear as _flax_linear

from fairjax import nnx_adapter
from fairjax.pruning import _scoring

PyTree = Any
Path = tuple[str, ...]

METHODS = ("exact", "mc", "hutchinson", "empirical_fisher")
LOSSES = _scoring.LOSSES  # ("softmax_cross_entropy", "sigmoid_binary_cross_entropy")

# Per-sample conv weight-gradient blocks [samples, columns, K_in, C_out] are materialised in
# chunks of at most this many elements (64 Mi floats = 256 MiB in float32).
DEFAULT_MAX_BLOCK_ELEMENTS = 1 << 26

# Backward columns beyond this count are processed in blocks rather than one dot each, to keep
# the unrolled program (and its compile time) small for many-class problems.
_MAX_COLUMN_BLOCKS = 16

# Hutchinson probes per compiled call when called eagerly (unrolled probes compile slowly).
_PROBES_PER_CALL = 8

# The memory budget of an eager per_group_diag call that names neither a budget nor a chunk
# size (design.md section 1.12): 2 GiB keeps the exact pass of VGG-11 at 64x64, batch 32, 8
# classes within what BackPACK's DiagGGNExact uses on that batch (bench/README.md).
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3

_UNSUPPORTED_PADDING = ("CIRCULAR", "CAUSAL", "REFLECT")

# False keeps feature-grouped (incl. depthwise) convs on the generic path. Private: it exists so
# tests and bench/curvature.py can compare against that path. Read at call time and passed to
# the jitted function as a static argument, so flipping it never reuses a stale executable.
_FAST_GROUPED_CONVS = True

# False runs convs on maps smaller than their kernel through the model's own conv instead of
# explicit patches (design.md section 1.7). Private, read at call time and passed as a static
# argument like _FAST_GROUPED_CONVS, so tests and the benchmarks can compare the two.
_IM2COL_TINY_MAPS = True

# Module families given a fast path (design.md section 1.12); the others take the generic path.
# Private, read at call time and passed as a static argument like _FAST_GROUPED_CONVS, so tests
# and bench/curvature.py can compare each fast path with the generic one.
FAST_FAMILIES = ("conv", "dense", "dense_general", "norm")
_FAST_FAMILIES = frozenset(FAST_FAMILIES)
_FAMILY = {
  nn.Conv: "conv",
  nn.Dense: "dense",
  nn.DenseGeneral: "dense_general",
  nn.LayerNorm: "norm",
  nn.RMSNorm: "norm",
}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """A Dense, DenseGeneral, Conv or LayerNorm/RMSNorm call whose diagonal is read off in closed
  form (design.md sections 1.5 and 1.12).

  Attributes:
    path: module path inside ``variables["params"]``, e.g. ``("conv3",)``.
    kind: ``"dense"`` (``nn.Dense`` and ``nn.DenseGeneral``), ``"conv"`` or ``"norm"``
      (``nn.LayerNorm`` / ``nn.RMSNorm`` scale and bias over the last axis).
    in_shape: per-sample input shape (leading batch dim of size 1 included).
    out_shape: per-sample output shape (leading batch dim of size 1 included).
    use_bias: whether the module has a ``bias`` parameter.
    kernel_size, strides, padding, input_dilation, kernel_dilation: conv geometry.
    feature_group_count: conv feature groups ``F``; the kernel is
      ``[*kernel_size, C_in / F, C_out]`` and output channel ``o`` reads input group
      ``o // (C_out / F)``.
    contract_axes: dense only: the axes of the per-sample input (``in_shape``, leading 1
      included) that the kernel contracts, sorted (``nn.Dense``: the last one); the kernel is
      ``[*in_shape[contract_axes], *features]`` and every other input axis is a "token" axis
      the weight is shared over.
    use_scale: norm only: whether the module has a ``scale`` parameter.
  """

  path: Path
  kind: str
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  use_bias: bool
  kernel_size: tuple[int, ...] = ()
  strides: tuple[int, ...] = ()
  padding: Any = None
  input_dilation: tuple[int, ...] = ()
  kernel_dilation: tuple[int, ...] = ()
  feature_group_count: int = 1
  contract_axes: tuple[int, ...] = ()
  use_scale: bool = False

  @property
  def key(self) -> str:
    return "/".join(self.path)


def _module_path(module: nn.Module) -> Path:
  return tuple(str(p) for p in module.scope.path)


def _as_tuple(value: Any, rank: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * rank
  if isinstance(value, int):
    return (value,) * rank
  return tuple(int(v) for v in value)


def _conv_geometry(module: nn.Conv, in_shape: tuple[int, ...], grouped: bool = True) -> dict | None:
  """Returns the conv's geometry, or None when the closed form does not apply.

  ``grouped=False`` rejects feature-grouped convs (they then take the generic path).
  """
  kernel_size = _as_tuple(
    module.kernel_size, 1 if isinstance(module.kernel_size, int) else len(module.kernel_size)
  )
  rank = len(kernel_size)
  if not 1 <= rank <= 3 or len(in_shape) != rank + 2:
    return None
  groups = int(module.feature_group_count)
  if module.mask is not None or groups < 1 or (groups != 1 and not grouped):
    return None
  if in_shape[-1] % groups or module.features % groups:
    return None
  if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
    return None
  padding = module.padding
  if isinstance(padding, str) and padding.upper() in _UNSUPPORTED_PADDING:
    return None
  padding = _flax_linear.canonicalize_padding(padding, rank)
  if not isinstance(padding, str):
    padding = tuple(tuple(int(v) for v in pair) for pair in padding)
  return dict(
    kernel_size=kernel_size,
    strides=_as_tuple(module.strides, rank),
    padding=padding,
    input_dilation=_as_tuple(module.input_dilation, rank),
    kernel_dilation=_as_tuple(module.kernel_dilation, rank),
    feature_group_count=groups,
  )


def _is_plain(module: nn.Module, base: type) -> bool:
  # Subclasses that keep the stock __call__ compute the same function; others may not.
  return isinstance(module, base) and type(module).__call__ is base.__call__


_NORM_MODULES = (nn.LayerNorm, nn.RMSNorm)
_FAST_MODULES = (nn.Dense, nn.DenseGeneral, nn.Conv) + _NORM_MODULES


def _dense_spec(
  module: nn.Module,
  path: Path,
  in_shape: tuple[int, ...],
  out_shape: tuple[int, ...],
  kernel_shape: tuple[int, ...],
) -> LayerSpec | None:
  """The dense spec of a plain ``nn.Dense`` / ``nn.DenseGeneral`` call, or None.

  DenseGeneral must have no ``batch_dims`` (a kernel per batch index is not a shared weight)
  and must not contract the per-sample batch axis 0.
  """
  if module.dot_general is not None or module.dot_general_cls is not None:
    return None
  ndim = len(in_shape)
  if isinstance(module, nn.Dense):
    axes, features = (ndim - 1,), (int(module.features),)
  else:
    if _flax_linear._canonicalize_tuple(module.batch_dims):
      return None
    axes = _flax_linear._normalize_axes(_flax_linear._canonicalize_tuple(module.axis), ndim)
    features = tuple(int(f) for f in _flax_linear._canonicalize_tuple(module.features))
  if 0 in axes or len(set(axes)) != len(axes) or not all(0 <= a < ndim for a in axes):
    return None
  if tuple(kernel_shape) != tuple(in_shape[a] for a in axes) + features:
    return None
  free = tuple(d for a, d in enumerate(in_shape) if a not in axes)
  if tuple(out_shape) != free + features:
    return None
  return LayerSpec(path, "dense", in_shape, out_shape, module.use_bias, contract_axes=axes)


def _norm_spec(
  module: nn.Module,
  path: Path,
  in_shape: tuple[int, ...],
  out_shape: tuple[int, ...],
  owned: set,
  flat_params: Mapping,
) -> LayerSpec | None:
  """The spec of a plain ``nn.LayerNorm`` / ``nn.RMSNorm`` call with per-feature scale/bias on
  the last axis and statistics over non-batch axes only, or None."""
  use_scale = bool(module.use_scale)
  use_bias = bool(getattr(module, "use_bias", False))
  expected = {("scale",)} if use_scale else set()
  expected |= {("bias",)} if use_bias else set()
  if owned != expected or not expected or module.axis_name is not None:
    return None
  ndim = len(in_shape)
  canon = lambda axes: tuple(sorted(a % ndim for a in _flax_linear._canonicalize_tuple(axes)))
  if canon(module.feature_axes) != (ndim - 1,) or 0 in canon(module.reduction_axes):
    return None
  if tuple(out_shape) != tuple(in_shape):
    return None
  if any(flat_params[path + k].shape != (in_shape[-1],) for k in expected):
    return None
  return LayerSpec(path, "norm", in_shape, out_shape, use_bias, use_scale=use_scale)


def discover_layers(
  model: nn.Module,
  variables: PyTree,
  image_shape: Sequence[int],
  apply_kwargs: Mapping[str, Any] | None = None,
  *,
  grouped_convs: bool = True,
  families: Sequence[str] = FAST_FAMILIES,
) -> tuple[LayerSpec, ...]:
  """Finds the module calls of ``model`` that the closed-form fast paths can handle.

  Runs one abstract (shape-only) per-sample forward pass. A module is recognised when it is a
  plain ``nn.Dense``, ``nn.DenseGeneral`` (no ``batch_dims``, also over extra token axes) or
  ``nn.Conv`` (1-3 spatial dims, any ``feature_group_count`` including depthwise, no mask,
  padding not circular/causal/reflect) owning exactly ``kernel`` (+ ``bias``) of the expected
  shape, or a plain ``nn.LayerNorm`` / ``nn.RMSNorm`` with per-feature ``scale`` / ``bias`` on
  the last axis (design.md section 1.12); it must be called exactly once, with its input passed
  positionally. Everything else falls back to the generic (still exact) path.

  Args:
    model: any Linen module.
    variables: its variables, ``{"params": ..., other collections}``.
    image_shape: shape of ONE example, e.g. ``(H, W, C)``.
    apply_kwargs: extra keyword arguments for ``model.apply``.
    grouped_convs: ``False`` leaves convs with ``feature_group_count > 1`` to the generic path.
    families: the module families to recognise, a subset of :data:`FAST_FAMILIES`
      (``"conv"``, ``"dense"``, ``"dense_general"``, ``"norm"``); the others are left to the
      generic path.

  Returns:
    A tuple of :class:`LayerSpec`, in call order.
  """
  apply_kwargs = dict(apply_kwargs or {})
  calls: dict[Path, list] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    # Input passed positionally (the probe pass reads args[0]); LayerNorm's keyword-only mask
    # is allowed, any other keyword argument leaves the call to the generic path.
    if (
      context.method_name == "__call__"
      and len(args) == 1
      and any(_is_plain(module, base) for base in _FAST_MODULES)
      and set(kwargs) <= ({"mask"} if isinstance(module, _NORM_MODULES) else set())
    ):
      calls.setdefault(_module_path(module), []).append(
        (module, tuple(args[0].shape), tuple(out.shape))
      )
    elif context.method_name == "__call__" and any(_is_plain(module, b) for b in _FAST_MODULES):
      calls.setdefault(_module_path(module), []).append(None)  # called another way: generic
    return out

  def forward(v, x):
    with nn.intercept_methods(record):
      return model.apply(v, x[None], **apply_kwargs)

  example = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
  jax.eval_shape(forward, variables, example)

  flat_params = traverse_util.flatten_dict(variables["params"])
  specs = []
  for path, uses in calls.items():
    if len(uses) != 1 or uses[0] is None:  # shared weights: squares of summed gradients
      continue
    module, in_shape, out_shape = uses[0]
    owned = {k[len(path) :] for k in flat_params if k[: len(path)] == path}
    family = next(f for base, f in _FAMILY.items() if _is_plain(module, base))
    # The root module is never a norm spec: the probe pass re-applies norms unbound.
    if in_shape[0] != 1 or family not in families or (family == "norm" and not path):
      continue
    if isinstance(module, _NORM_MODULES):
      spec = _norm_spec(module, path, in_shape, out_shape, owned, flat_params)
      if spec is not None:
        specs.append(spec)
      continue
    expected = {("kernel",), ("bias",)} if module.use_bias else {("kernel",)}
    if owned != expected:
      continue
    if isinstance(module, (nn.Dense, nn.DenseGeneral)):
      spec = _dense_spec(module, path, in_shape, out_shape, flat_params[path + ("kernel",)].shape)
      if spec is not None:
        specs.append(spec)
    else:
      geometry = _conv_geometry(module, in_shape, grouped_convs)
      if geometry is None:
        continue
      groups = geometry["feature_group_count"]
      kernel_shape = geometry["kernel_size"] + (in_shape[-1] // groups, out_shape[-1])
      if flat_params[path + ("kernel",)].shape != kernel_shape:
        continue
      specs.append(LayerSpec(path, "conv", in_shape, out_shape, module.use_bias, **geometry))
  return tuple(specs)


def loss_hessian_factor(logits: jax.Array, loss: str = _scoring.SOFTMAX) -> jax.Array:
  """Rank ``C-1`` factor ``F`` of the softmax cross-entropy Hessian w.r.t. the logits.

  With ``loss="sigmoid_binary_cross_entropy"`` (logits ``float[N, A]``, ``A >= 1``) it returns
  :func:`sigmoid_loss_hessian_factor` instead: ``float[N, A, A]``, ``diag(sqrt(p (1 - p)))``.

  ``H = diag(p) - p p^T`` has the symmetric square root ``S = diag(sqrt p) - p sqrt(p)^T``
  (design.md section 1), whose null vector is ``sqrt(p)`` (unit norm). A Householder reflection
  ``Q`` that maps ``e_k`` to ``sqrt(p)`` (``k = argmin p``, which keeps the reflection well
  conditioned) turns column ``k`` of ``S Q`` into zero; the other ``C-1`` columns satisfy
  ``F F^T = S Q Q^T S^T = H``.

  Args:
    logits: ``float[N, C]``, ``C >= 2``.

  Returns:
    ``float[N, C, C-1]`` with ``F[n] @ F[n].T == H_n``.
  """
  if _scoring.check_loss(loss) == _scoring.SIGMOID:
    return sigmoid_loss_hessian_factor(logits)
  num_classes = logits.shape[-1]
  p = jax.nn.softmax(logits, axis=-1)
  sqrt_p = jnp.sqrt(p)
  eye = jnp.eye(num_classes, dtype=p.dtype)
  s = sqrt_p[:, None, :] * (eye[None] - p[:, :, None])  # column j: sqrt(p_j) (e_j - p)
  k = jnp.argmin(p, axis=-1)
  e_k = jax.nn.one_hot(k, num_classes, dtype=p.dtype)
  v = e_k - sqrt_p
  sqrt_pk = jnp.take_along_axis(sqrt_p, k[:, None], axis=-1)  # [N, 1]
  s_v = sqrt_pk * (e_k - p)  # S v = S e_k because S sqrt(p) = 0
  v_norm2 = 2.0 * (1.0 - sqrt_pk)  # |e_k - sqrt p|^2, >= 2 - sqrt(2) since p_k <= 1/2
  s_q = s - 2.0 * s_v[:, :, None] * v[:, None, :] / v_norm2[:, :, None]
  keep = jnp.arange(num_classes - 1)[None, :]
  keep = keep + (keep >= k[:, None])  # every column index except k
  return jnp.take_along_axis(s_q, keep[:, None, :], axis=-1)


def sigmoid_loss_hessian_factor(logits: jax.Array) -> jax.Array:
  """Factor of the Hessian of the attribute-summed sigmoid binary cross-entropy (design.md
  section 1.10).

  The attributes are independent binary problems, so ``H = diag(p (1 - p))`` with
  ``p = sigmoid(z)``; its square root ``F = diag(sqrt(p (1 - p)))`` has one column per attribute
  (no column can be dropped: ``H`` has full rank ``A`` for finite logits).

  Args:
    logits: ``float[N, A]``, ``A >= 1``.

  Returns:
    ``float[N, A, A]`` (diagonal) with ``F[n] @ F[n].T == H_n``.
  """
  variance = jax.nn.sigmoid(logits) * jax.nn.sigmoid(-logits)  # p (1 - p), stable for large |z|
  eye = jnp.eye(logits.shape[-1], dtype=variance.dtype)
  return jnp.sqrt(variance)[:, :, None] * eye[None]


def _sigmoid_columns(
  logits: jax.Array, labels: jax.Array, method: str, rng: jax.Array | None, num_samples: int
) -> jax.Array:
  """:func:`_columns` of the attribute-summed sigmoid BCE: ``float[N, A, K]``."""
  p = jax.nn.sigmoid(logits)
  if method == "exact":
    return sigmoid_loss_hessian_factor(logits)
  if method == "empirical_fisher":
    return (p - labels.astype(p.dtype))[:, :, None]
  if method == "mc":
    keys = jax.random.split(rng, logits.shape[0])
    draw = jax.vmap(lambda key, pn: jax.random.bernoulli(key, pn, (num_samples,) + pn.shape))
    sampled = draw(keys, p).astype(p.dtype)  # [N, K, A], y~ ~ Bernoulli(p) per attribute
    return jnp.swapaxes(p[:, None, :] - sampled, 1, 2) / math.sqrt(num_samples)
  raise ValueError(f"method={method!r} has no column factor")


def _columns(
  logits: jax.Array,
  labels: jax.Array,
  method: str,
  rng: jax.Array | None,
  num_samples: int,
  loss: str = _scoring.SOFTMAX,
) -> jax.Array:
  """Per-sample loss-Hessian factors ``float[N, C, K]`` for the backward columns."""
  logits = jax.lax.stop_gradient(logits)
  if loss == _scoring.SIGMOID:
    return _sigmoid_columns(logits, labels, method, rng, num_samples)
  num_classes = logits.shape[-1]
  p = jax.nn.softmax(logits, axis=-1)
  if method == "exact":
    return loss_hessian_factor(logits)
  if method == "empirical_fisher":
    return (p - jax.nn.one_hot(labels, num_classes, dtype=p.dtype))[:, :, None]
  if method == "mc":
    keys = jax.random.split(rng, logits.shape[0])
    draw = jax.vmap(lambda key, lg: jax.random.categorical(key, lg, shape=(num_samples,)))
    sampled = draw(keys, logits)  # [N, K]
    onehot = jax.nn.one_hot(sampled, num_classes, dtype=p.dtype)  # [N, K, C]
    return jnp.swapaxes(p[:, None, :] - onehot, 1, 2) / math.sqrt(num_samples)
  raise ValueError(f"method={method!r} has no column factor")


def _patches(spec: LayerSpec, x: jax.Array) -> tuple[jax.Array, bool]:
  """im2col of ``x [n, *spatial, C_in]`` -> ``([n, P, K_in], kernel_major)``.

  Pad + strided slices in kernel order ``(*kernel_size, C_in)`` (the kernel's own layout); about
  2x faster on XLA:CPU than ``lax.conv_general_dilated_patches``, an identity-kernel convolution
  that is kept only for input (transposed-conv style) dilation, in channel-major order.
  """
  rank = len(spec.kernel_size)
  if any(d != 1 for d in spec.input_dilation):
    spatial = "DHW"[3 - rank :]
    dims = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    patches = jax.lax.conv_general_dilated_patches(
      x,
      spec.kernel_size,
      spec.strides,
      spec.padding,
      lhs_dilation=spec.input_dilation,
      rhs_dilation=spec.kernel_dilation,
      dimension_numbers=dims,
      precision=jax.lax.Precision.HIGHEST,
    )
    return patches.reshape(x.shape[0], -1, patches.shape[-1]), False
  patches = jnp.stack(_shifted_windows(spec, x), axis=-2)  # [n, *out, prod(kernel), C_in]
  return patches.reshape(x.shape[0], -1, patches.shape[-2] * patches.shape[-1]), True


def _shifted_windows(spec: LayerSpec, x: jax.Array) -> list[jax.Array]:
  """The input each kernel tap sees: ``prod(kernel_size)`` arrays ``[n, *spatial_out, C_in]``.

  Pad + one strided slice per tap, in kernel order. Needs ``input_dilation == 1``.
  """
  rank = len(spec.kernel_size)
  in_spatial = x.shape[1 : 1 + rank]
  window = tuple((k - 1) * d + 1 for k, d in zip(spec.kernel_size, spec.kernel_dilation))
  pads = spec.padding
  if isinstance(pads, str):
    pads = jax.lax.padtype_to_pads(in_spatial, window, spec.strides, pads)
  x = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in pads) + ((0, 0),))
  out_spatial = tuple(
    (size + lo + hi - w) // s + 1
    for size, (lo, hi), w, s in zip(in_spatial, pads, window, spec.strides)
  )
  windows = []
  for offset in itertools.product(*(range(k) for k in spec.kernel_size)):
    index = (slice(None),) + tuple(
      slice(o * d, o * d + (n - 1) * s + 1, s)
      for o, d, n, s in zip(offset, spec.kernel_dilation, out_spatial, spec.strides)
    )
    windows.append(x[index])
  return windows


def _chunks(total: int, size: int) -> list[slice]:
  size = max(1, min(size, total))
  return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def _per_sample_sq_sum(
  x: jax.Array, cot: jax.Array, weights: jax.Array, max_block: int
) -> jax.Array:
  """``sum_n w[n, g] sum_c (x[n]^T cot[n, c])**2`` for all groups -> ``[G, I, O]``.

  Args:
    x: ``[N, P, I]`` (inputs or im2col patches; ``P`` positions the weight is shared over).
    cot: ``[N, K, P, O]`` output cotangents, one per backward column.
    weights: ``float[N, G]``.

  Two exact formulations, picked by a cost model (measured on XLA:CPU, bench/curvature.py):
  the direct one materialises each per-sample, per-column gradient (``2 K P`` flops per output
  element, but memory bound); the pairwise one uses
  ``sum_c (sum_p a_p d_cp)^2 = sum_{p<=p'} (2 - [p=p']) a_p a_p' sum_c d_cp d_cp'``, one
  compute-bound GEMM of depth ``P(P+1)/2`` per sample, which wins when few positions share the
  weight (late conv layers, e.g. 6x faster for 4x4 maps with K = 7).
  """
  n, k, p, o = cot.shape
  i = x.shape[-1]
  acc = None
  if p * (p + 1) // 2 < 2 * k * p:
    rows, cols = jnp.triu_indices(p)
    scale = jnp.where(rows == cols, 1.0, 2.0).astype(x.dtype)
    x_pairs = x[:, rows, :] * x[:, cols, :] * scale[None, :, None]  # [N, Q, I]
    d_pairs = jnp.einsum("ncpo,ncqo->npqo", cot, cot)[:, rows, cols, :]  # [N, Q, O]
    for sl in _chunks(n, max_block // max(i * o, 1)):
      per_sample = jnp.einsum("nqi,nqo->nio", x_pairs[sl], d_pairs[sl])
      part = jnp.tensordot(weights[sl], per_sample, axes=(0, 0))
      acc = part if acc is None else acc + part
    return acc
  # Columns are looped (in at most _MAX_COLUMN_BLOCKS blocks) and their squares accumulated:
  # on XLA:CPU this runs about 2x faster than one batched dot over all columns followed by a
  # square-and-reduce over the column axis, which is memory bound (measured in
  # bench/curvature.py's development; see design.md section 1 on XLA:CPU pitfalls).
  block = -(-k // _MAX_COLUMN_BLOCKS)
  for sl in _chunks(n, max_block // max(block * i * o, 1)):
    sq = None
    for c0 in range(0, k, block):
      # (o, i) output order: up to ~10% faster than (i, o) for XLA:CPU's dot kernels.
      grads = jnp.einsum("ncpo,npi->ncoi", cot[sl, c0 : c0 + block], x[sl])
      part = jnp.sum(grads * grads, axis=1)
      sq = part if sq is None else sq + part
    part = jnp.tensordot(weights[sl], sq, axes=(0, 0))
    acc = part if acc is None else acc + part
  return jnp.swapaxes(acc, 1, 2)


def _bias_sq_sum(cot: jax.Array, weights: jax.Array) -> jax.Array:
  """Bias diagonal from cotangents ``[N, K, P, O]`` -> ``[G, O]``."""
  bias_grads = jnp.sum(cot, axis=2)  # [N, K, O]
  return weights.T @ jnp.sum(bias_grads * bias_grads, axis=1)


def _conv_diag(
  spec: LayerSpec,
  x: jax.Array,
  cot: jax.Array,
  weights: jax.Array,
  kernel_shape: tuple[int, ...],
  max_block: int,
) -> dict[str, jax.Array]:
  """Per-group kernel/bias diagonal of one conv from inputs and output cotangents.

  Args:
    x: inputs ``[N, *spatial_in, C_in]``.
    cot: output cotangents ``[N, K, *spatial_out, C_out]`` (one per backward column).
    weights: ``float[N, G]`` group weights.
    kernel_shape: ``(*kernel_size, C_in / F, C_out)`` (``F`` = ``spec.feature_group_count``).
  """
  n, k = cot.shape[:2]
  c_out = cot.shape[-1]
  if spec.feature_group_count != 1:
    out = {"kernel": _grouped_conv_kernel_diag(spec, x, cot, weights, max_block)}
    if spec.use_bias:
      out["bias"] = _bias_sq_sum(cot.reshape(n, k, -1, c_out), weights)
    return out
  cot = cot.reshape(n, k, -1, c_out)  # [N, K, P, C_out]
  patches, kernel_major = _patches(spec, x)
  acc = _per_sample_sq_sum(patches, cot, weights, max_block)  # [G, K_in, C_out]
  num_groups = weights.shape[1]
  if kernel_major:
    acc = acc.reshape((num_groups,) + tuple(kernel_shape))
  else:  # channel-major (C_in, *kernel_size) -> the kernel's (*kernel_size, C_in, C_out)
    kernel_size = kernel_shape[:-2]
    rank = len(kernel_size)
    acc = acc.reshape((num_groups, kernel_shape[-2]) + tuple(kernel_size) + (c_out,))
    acc = jnp.transpose(acc, (0,) + tuple(range(2, 2 + rank)) + (1, 2 + rank))
  out = {"kernel": acc}
  if spec.use_bias:
    out["bias"] = _bias_sq_sum(cot, weights)
  return out


def _depthwise_diag(
  spec: LayerSpec, x: jax.Array, cot: jax.Array, weights: jax.Array, max_block: int
) -> jax.Array:
  """Kernel diagonal ``[G, *kernel_size, 1, C_out]`` of a conv with one input channel per group.

  Args:
    x: inputs ``[N, *spatial_in, F]`` (``F`` = feature groups = input channels).
    cot: output cotangents ``[N, K, *spatial_out, F * M]`` (``M`` = channel multiplier).
    weights: ``float[N, G]``.

  Per tap ``t`` the per-sample, per-column gradient is ``sum_p x_t[p, f] * cot[c, p, f, m]``: a
  multiply-reduce over positions that XLA fuses with the shifted slice, so neither patches nor
  products are materialised. As a dot it is a batched ``[T, P] x [P, K]`` per (sample,
  channel) behind transposes of patches and cotangents: 1.4-5x slower on XLA:CPU for
  MobileNetV2's 112x112 and 56x56 layers (batch 32, 7 columns; measured while developing
  this, on a shared 2-core machine).
  """
  n, k = cot.shape[:2]
  f = x.shape[-1]
  m = cot.shape[-1] // f
  rank = len(spec.kernel_size)
  positions = tuple(range(2, 2 + rank))
  cot = cot.reshape(cot.shape[:-1] + (f, m))  # [N, K, *spatial_out, F, M]
  windows = _shifted_windows(spec, x)
  taps = len(windows)
  acc = None
  for sl in _chunks(n, max_block // max(k * taps * f * m, 1)):
    grads = jnp.stack(
      [jnp.sum(w[sl][:, None, ..., None] * cot[sl], axis=positions) for w in windows], axis=2
    )  # [n, K, T, F, M]
    part = jnp.tensordot(weights[sl], jnp.sum(grads * grads, axis=1), axes=(0, 0))
    acc = part if acc is None else acc + part
  return acc.reshape((weights.shape[1],) + tuple(spec.kernel_size) + (1, f * m))


def _is_depthwise(spec: LayerSpec) -> bool:
  """One input channel per feature group and no input dilation (shifted windows apply)."""
  return (
    spec.kind == "conv"
    and spec.feature_group_count > 1
    and spec.in_shape[-1] == spec.feature_group_count
    and all(d == 1 for d in spec.input_dilation)
  )


def _is_tiny_map(spec: LayerSpec) -> bool:
  """An ungrouped conv whose input map has fewer positions than its kernel has taps."""
  return (
    spec.kind == "conv"
    and spec.feature_group_count == 1
    and all(d == 1 for d in spec.input_dilation)
    and math.prod(spec.in_shape[1:-1]) < math.prod(spec.kernel_size)
  )


def _tiny_map_apply(spec: LayerSpec, module: nn.Conv, x: jax.Array) -> jax.Array:
  """The conv ``module(x)`` on a map smaller than its kernel as explicit patches @ kernel.

  Same function as the module's ``lax.conv_general_dilated`` (up to float summation order).
  XLA's algebraic simplifier swaps the operands of a conv whose kernel has more taps than its
  input map has positions (a 3x3 conv on a 2x2 or 1x1 map), and XLA:CPU runs the swapped conv
  about 100x slower than this matmul (design.md section 1.7; bench/profile_curvature.py).
  ``x``: ``[n, *spatial, C_in]`` -> ``[n, *spatial_out, C_out]``. Only used inside the
  curvature pass.
  """
  kernel = module.get_variable("params", "kernel")
  bias = module.get_variable("params", "bias") if spec.use_bias else None
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  patches = jnp.concatenate(_shifted_windows(spec, x), axis=-1)  # kernel order (*taps, C_in)
  out = jnp.dot(patches, kernel.reshape(-1, kernel.shape[-1]), precision=module.precision)
  return out if bias is None else out + bias


def _depthwise_apply(spec: LayerSpec, module: nn.Conv, x: jax.Array) -> jax.Array:
  """The depthwise conv ``module(x)`` as a sum over taps of shifted windows times kernel rows.

  Same function as the module's ``lax.conv_general_dilated`` (up to float summation order), but
  XLA:CPU lowers depthwise convolutions, and even more their input gradients, poorly. Measured
  on MobileNetV2 layers at 224 rows (7 columns x 32 samples, as in the exact pass): the conv's
  forward is 5.6-6.3x slower than this fused multiply-add, and the stride-2 112x112x96 layer's
  input gradient took 35 s against 3 s for its forward. Only used inside the curvature pass.
  """
  kernel = module.get_variable("params", "kernel")
  bias = module.get_variable("params", "bias") if spec.use_bias else None
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  f = x.shape[-1]
  m = kernel.shape[-1] // f
  taps = kernel.reshape(-1, f, m)  # kernel [*kernel_size, 1, F * M], channel o = f * M + m
  out = None
  for t, window in enumerate(_shifted_windows(spec, x)):
    term = window[..., None] * taps[t]
    out = term if out is None else out + term
  out = out.reshape(out.shape[:-2] + (f * m,))
  return out if bias is None else out + bias


def _grouped_conv_kernel_diag(
  spec: LayerSpec, x: jax.Array, cot: jax.Array, weights: jax.Array, max_block: int
) -> jax.Array:
  """Kernel diagonal ``[G, *kernel_size, C_in / F, C_out]`` of a conv with ``F`` feature groups.

  Args:
    x: inputs ``[N, *spatial_in, C_in]``.
    cot: output cotangents ``[N, K, *spatial_out, C_out]``.
    weights: ``float[N, G]``.

  One input channel per group (depthwise, any channel multiplier) takes
  :func:`_depthwise_diag`. Otherwise the im2col patches are split by group and
  :func:`_per_sample_sq_sum` is vmapped over the groups: a batched dot, not a (slow on XLA:CPU)
  grouped convolution.
  """
  f = spec.feature_group_count
  c_in, c_out = x.shape[-1], cot.shape[-1]
  i, o = c_in // f, c_out // f
  rank = len(spec.kernel_size)
  if _is_depthwise(spec):
    return _depthwise_diag(spec, x, cot, weights, max_block)
  n, k = cot.shape[:2]
  cot = cot.reshape(n, k, -1, f, o)  # [N, K, P, F, O]
  patches, kernel_major = _patches(spec, x)
  p = patches.shape[1]
  taps = math.prod(spec.kernel_size)
  if kernel_major:  # (tap, group, channel) -> (group, tap, channel)
    patches = patches.reshape(n, p, taps, f, i).transpose(0, 1, 3, 2, 4)
  patches = patches.reshape(n, p, f, taps * i)  # channel-major is (group, channel, tap) already
  per_group = jax.vmap(
    lambda xf, cf: _per_sample_sq_sum(xf, cf, weights, max(max_block // f, 1)), in_axes=(2, 3)
  )(patches, cot)  # [F, G, taps * I, O]
  num_groups = weights.shape[1]
  if kernel_major:
    acc = per_group.reshape((f, num_groups) + tuple(spec.kernel_size) + (i, o))
  else:
    acc = per_group.reshape((f, num_groups, i) + tuple(spec.kernel_size) + (o,))
    acc = jnp.moveaxis(acc, 2, 2 + rank)
  acc = jnp.moveaxis(acc, 0, -2)  # [G, *kernel_size, I, F, O]
  return acc.reshape((num_groups,) + tuple(spec.kernel_size) + (i, c_out))


def _dense_diag(
  spec: LayerSpec, x: jax.Array, cot: jax.Array, weights: jax.Array, max_block: int
) -> dict[str, jax.Array]:
  """Per-group kernel/bias diagonal of one Dense layer.

  Args:
    x: inputs ``[N, *extra, D_in]`` (``extra`` = non-batch dims the Dense maps over).
    cot: output cotangents ``[N, K, *extra, D_out]``.
    weights: ``float[N, G]``.
  """
  n, k = cot.shape[:2]
  d_in, d_out = x.shape[-1], cot.shape[-1]
  x = x.reshape(n, -1, d_in)
  cot = cot.reshape(n, k, -1, d_out)
  if x.shape[1] == 1:
    # sum_c (a ⊗ d_c)^2 = a^2 ⊗ sum_c d_c^2: no per-sample gradient needed.
    x2 = x[:, 0] * x[:, 0]
    d2 = jnp.sum(cot[:, :, 0] * cot[:, :, 0], axis=1)
    kernel = jnp.einsum("ng,ni,no->gio", weights, x2, d2)
  else:
    kernel = _per_sample_sq_sum(x, cot, weights, max_block)
  out = {"kernel": kernel}
  if spec.use_bias:
    out["bias"] = _bias_sq_sum(cot, weights)
  return out


def _dense_general_diag(
  spec: LayerSpec, x: jax.Array, cot: jax.Array, weights: jax.Array, max_block: int
) -> dict[str, jax.Array]:
  """Per-group kernel/bias diagonal of an ``nn.Dense`` / ``nn.DenseGeneral`` call (design.md
  section 1.12).

  Args:
    x: inputs ``[N, *in_shape]`` (``in_shape`` with its per-sample leading 1).
    cot: output cotangents ``[N, K, *out_shape]``.
    weights: ``float[N, G]``.

  The contracted axes move last and are flattened, every other axis is a token axis the weight
  is shared over: ``x [N, T, I]``, ``cot [N, K, T, O]``. With ``T = 1`` the outer-product
  identity applies; with tokens the per-sample gradient of a column is a sum over tokens,
  squared once per sample and column (:func:`_per_sample_sq_sum`). The result is reshaped to
  the kernel ``[G, *in_shape[contract_axes], *features]`` and bias ``[G, *features]``.
  """
  n, k = cot.shape[:2]
  axes = spec.contract_axes
  ndim = len(spec.in_shape)
  in_dims = tuple(spec.in_shape[a] for a in axes)
  features = tuple(spec.out_shape[ndim - len(axes) :])
  x = jnp.moveaxis(x, [1 + a for a in axes], list(range(ndim + 1 - len(axes), ndim + 1)))
  x = x.reshape(n, -1, math.prod(in_dims))
  cot = cot.reshape(n, k, -1, math.prod(features))
  parts = _dense_diag(spec, x, cot, weights, max_block)
  num_groups = weights.shape[1]
  out = {"kernel": parts["kernel"].reshape((num_groups,) + in_dims + features)}
  if "bias" in parts:
    out["bias"] = parts["bias"].reshape((num_groups,) + features)
  return out


def _normalized(module: nn.Module, x: jax.Array, kwargs: Mapping[str, Any]) -> jax.Array:
  """The normalised input of a LayerNorm/RMSNorm call before its scale and bias: the same
  module without them (same statistics, epsilon, dtype), i.e. d(output)/d(scale)."""
  bare = {"use_scale": False}
  if isinstance(module, nn.LayerNorm):
    bare["use_bias"] = False
  return module.clone(parent=None, **bare).apply({}, x, **kwargs)


def _norm_diag(
  spec: LayerSpec, xhat: jax.Array, cot: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
  """Per-group scale/bias diagonal of a LayerNorm/RMSNorm over the last axis (design.md
  section 1.12).

  Args:
    xhat: normalised inputs ``[N, *in_shape]`` (:func:`_normalized`).
    cot: output cotangents ``[N, K, *in_shape]``.
    weights: ``float[N, G]``.

  Per sample and column the scale gradient is ``sum_t xhat[t] * cot[c, t]`` and the bias
  gradient ``sum_t cot[c, t]`` over the token positions ``t``; both are ``[D]``, so nothing
  larger than the cotangents is materialised.
  """
  n, k = cot.shape[:2]
  d = cot.shape[-1]
  cot = cot.reshape(n, k, -1, d)
  out = {}
  if spec.use_scale:
    g = jnp.einsum("ntd,nktd->nkd", xhat.reshape(n, -1, d), cot)
    out["scale"] = weights.T @ jnp.sum(g * g, axis=1)
  if spec.use_bias:
    out["bias"] = _bias_sq_sum(cot, weights)
  return out


def _split_params(params: PyTree, specs: Sequence[LayerSpec]) -> tuple[dict, dict]:
  flat = traverse_util.flatten_dict(params)
  fast_paths = {s.path for s in specs}
  fixed = {k: v for k, v in flat.items() if k[:-1] in fast_paths}
  generic = {k: v for k, v in flat.items() if k[:-1] not in fast_paths}
  return fixed, generic


def _ggn_columns_diag(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  groups: jax.Array,
  rng: jax.Array | None,
  *,
  num_groups: int,
  method: str,
  num_samples: int,
  chunk_size: int | None,
  apply_kwargs: Mapping[str, Any],
  max_block: int,
  grouped_convs: bool = True,
  families: frozenset = _FAST_FAMILIES,
  loss: str = _scoring.SOFTMAX,
  tiny_maps: bool = True,
) -> tuple[PyTree, jax.Array]:
  """exact / mc / empirical_fisher: one vmapped forward + K-column VJP per sample chunk."""
  specs = discover_layers(
    model, variables, images.shape[1:], apply_kwargs, grouped_convs=grouped_convs, families=families
  )
  params, others = _scoring.split_variables(variables)
  fixed, generic = _split_params(params, specs)
  by_key = {s.key: s for s in specs}
  depthwise = {s.key for s in specs if _is_depthwise(s)}
  tiny = {s.key for s in specs if tiny_maps and _is_tiny_map(s)}
  n = images.shape[0]
  dtype = _scoring.params_dtype(params)
  weights, counts = _scoring.group_weights(groups, num_groups, dtype)

  def sample_logits(generic_flat, probes, image):
    acts = {}

    def inject(next_fun, args, kwargs, context):
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      key = "/".join(_module_path(context.module))
      if key not in probes:
        return next_fun(*args, **kwargs)
      if by_key[key].kind == "norm":
        acts[key] = _normalized(context.module, args[0], kwargs)
      else:
        acts[key] = args[0]
      if key in depthwise:
        return _depthwise_apply(by_key[key], context.module, args[0]) + probes[key]
      if key in tiny:
        return _tiny_map_apply(by_key[key], context.module, args[0]) + probes[key]
      return next_fun(*args, **kwargs) + probes[key]

    full = traverse_util.unflatten_dict({**fixed, **generic_flat})
    with nn.intercept_methods(inject):
      logits = model.apply({"params": full, **others}, image[None], **apply_kwargs)
    return logits[0], acts

  def one_sample(image, label, key):
    probes = {s.key: jnp.zeros(s.out_shape, dtype) for s in specs}
    logits, vjp_fn, acts = jax.vjp(
      lambda g, pr: sample_logits(g, pr, image), generic, probes, has_aux=True
    )
    cols = _columns(logits[None], label[None], method, key, num_samples, loss)[0]  # [C, K]
    generic_cot, probe_cot = jax.vmap(vjp_fn, in_axes=1)(cols)
    return acts, generic_cot, probe_cot

  if method == "mc":
    sample_keys = jax.random.split(rng, n)
  else:  # unused, but keeps one vmapped signature
    sample_keys = jnp.zeros((n, 2), jnp.uint32)

  totals: dict[Path, jax.Array] = {}

  def add(path: Path, value: jax.Array) -> None:
    totals[path] = value if path not in totals else totals[path] + value

  for sl in _chunks(n, chunk_size or n):
    acts, generic_cot, probe_cot = jax.vmap(one_sample)(images[sl], labels[sl], sample_keys[sl])
    w = weights[sl]
    for key, spec in by_key.items():
      if spec.kind == "conv":
        x = acts[key][:, 0]  # drop the per-sample batch dim of size 1
        cot = probe_cot[key][:, :, 0]
        kernel_shape = fixed[spec.path + ("kernel",)].shape
        parts = _conv_diag(spec, x, cot, w, kernel_shape, max_block)
      elif spec.kind == "norm":
        parts = _norm_diag(spec, acts[key], probe_cot[key], w)
      else:
        parts = _dense_general_diag(spec, acts[key], probe_cot[key], w, max_block)
      for name, value in parts.items():
        add(spec.path + (name,), value)
    for path, g in generic_cot.items():  # [n, K, *shape]
      sq = jnp.sum(g * g, axis=1)
      add(path, jnp.einsum("ng,n...->g...", w, sq))

  flat_out = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    value = totals.get(path)
    flat_out[path] = (
      jnp.zeros((num_groups,) + leaf.shape, leaf.dtype)
      if value is None
      else value.astype(leaf.dtype)
    )
  return traverse_util.unflatten_dict(flat_out), counts


def _hutchinson_diag(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  groups: jax.Array,
  rng: jax.Array,
  *,
  num_groups: int,
  num_samples: int,
  apply_kwargs: Mapping[str, Any],
  loss: str = _scoring.SOFTMAX,
) -> tuple[PyTree, jax.Array]:
  """Hutchinson estimate of each group's Hessian diagonal, ``mean_v v * (H_g v)``."""
  params, others = _scoring.split_variables(variables)
  weights, counts = _scoring.group_weights(groups, num_groups, _scoring.params_dtype(params))

  def group_grads(p):
    _, vjp_fn = jax.vjp(
      lambda q: _scoring.per_sample_loss(model, q, others, images, labels, apply_kwargs, loss=loss),
      p,
    )
    # A Python loop over groups re-uses one forward; vmapping the VJP over groups would batch
    # the conv weight gradients into slow grouped convolutions on XLA:CPU (design.md section 1).
    return [vjp_fn(weights[:, g])[0] for g in range(num_groups)]

  leaves, treedef = jax.tree.flatten(params)
  acc = None
  # Probes are unrolled, not scanned: a conv backward inside lax.scan/map is 20-80x slower on
  # XLA:CPU (design.md section 1).
  for key in jax.random.split(rng, num_samples):
    keys = jax.random.split(key, len(leaves))
    probe = jax.tree.unflatten(
      treedef,
      [jax.random.rademacher(k, leaf.shape, dtype=leaf.dtype) for k, leaf in zip(keys, leaves)],
    )
    _, hvps = jax.jvp(group_grads, (params,), (probe,))
    est = jax.tree.map(lambda v, *hv: v[None] * jnp.stack(hv), probe, *hvps)
    acc = est if acc is None else jax.tree.map(jnp.add, acc, est)
  return jax.tree.map(lambda a: a / num_samples, acc), counts


@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "num_groups",
    "method",
    "num_samples",
    "chunk_size",
    "apply_kwargs",
    "max_block",
    "grouped_convs",
    "families",
    "loss",
    "tiny_maps",
  ),
)
def _per_group_diag(
  model,
  variables,
  images,
  labels,
  groups,
  rng,
  *,
  num_groups,
  method,
  num_samples,
  chunk_size,
  apply_kwargs,
  max_block,
  grouped_convs=True,
  families=_FAST_FAMILIES,
  loss=_scoring.SOFTMAX,
  tiny_maps=True,
):
  apply_kwargs = dict(apply_kwargs)
  if method == "hutchinson":
    return _hutchinson_diag(
      model,
      variables,
      images,
      labels,
      groups,
      rng,
      num_groups=num_groups,
      num_samples=num_samples,
      apply_kwargs=apply_kwargs,
      loss=loss,
    )
  return _ggn_columns_diag(
    model,
    variables,
    images,
    labels,
    groups,
    rng,
    num_groups=num_groups,
    method=method,
    num_samples=num_samples,
    chunk_size=chunk_size,
    apply_kwargs=apply_kwargs,
    max_block=max_block,
    grouped_convs=grouped_convs,
    families=families,
    loss=loss,
    tiny_maps=tiny_maps,
  )


def per_group_diag(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  groups: jax.Array,
  *,
  num_groups: int,
  method: str = "exact",
  rng: jax.Array | None = None,
  num_samples: int = 1,
  chunk_size: int | None = None,
  apply_kwargs: Mapping[str, Any] | None = None,
  return_counts: bool = False,
  max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
  loss: str = _scoring.SOFTMAX,
  memory_budget_bytes: int | None = None,
) -> PyTree:
  """Diagonal GGN (or Hessian estimate) of every group's mean cross-entropy, in one pass.

  See the module docstring and design.md section 1 for the definition and the algorithm.

  Args:
    model: any ``flax.linen.Module`` mapping ``images`` to logits ``[N, C]``; called as
      ``model.apply(variables, images, **apply_kwargs)``. BatchNorm must run in inference mode
      (batch statistics would couple samples), e.g. ``apply_kwargs={"train": False}``. Or an
      ``flax.nnx.Module`` (in ``model.eval()`` mode), called as ``model(images,
      **apply_kwargs)``: see :mod:`fairjax.nnx_adapter` (design.md section 1.11).
    variables: the model's variables; ``variables["params"]`` is differentiated, the other
      collections (``batch_stats``...) are constants. ``None`` for an NNX module (it carries
      its state; every ``nnx.Param`` is differentiated).
    images: ``float[N, ...]`` (NHWC for image models). May be sharded over devices.
    labels: ``int[N]`` class ids in ``[0, C)``; with ``loss="sigmoid_binary_cross_entropy"``
      ``[N, A]`` in ``{0, 1}`` (int or float), one column per logit.
    groups: ``int[N]`` group ids in ``[0, num_groups)``; other ids (e.g. ``-1``) are ignored.
    num_groups: number of groups ``G`` (static).
    method: ``"exact"`` | ``"mc"`` | ``"hutchinson"`` | ``"empirical_fisher"`` (static).
    rng: PRNG key, required for ``"mc"`` and ``"hutchinson"``.
    num_samples: MC samples per example (``"mc"``) or Rademacher probes (``"hutchinson"``).
    chunk_size: samples per chunk; ``None`` processes the batch at once. Called eagerly, each
      chunk is a separate compiled call, so peak memory is that of one chunk (measured on
      VGG-11, bench/README.md). Inside an outer ``jax.jit`` the chunks are one XLA program and
      XLA:CPU plans buffers for all of them. ``exact`` / ``empirical_fisher`` results do not
      depend on it; ``mc`` / ``hutchinson`` draw per-chunk keys (``fold_in(rng, chunk)``).
      Memory budget (measured with ``bench/memory.py``, XLA's plan of one chunk call, exact,
      float32): ``(1 + G) * 4 * num_params`` bytes (params and the output) plus a per-sample
      cost ``s`` times ``chunk_size``, so pick ``chunk_size = (budget - (1 + G) * 4 *
      num_params) / s``. For ResNet-18 at 224x224 with 8 columns (9 classes), 2 groups:
      128 MiB + 291 MiB per sample (419 MiB at 1, 2,458 MiB at 8, 18,764 MiB at 64; a plain
      gradient of the 64-sample batch plans 1,798 MiB), so ``chunk_size=4`` (1.3 GiB) scores
      within the memory of a plain gradient of the batch. ``s`` depends on the model, the
      image size and the class count: ``python -m bench.memory --compile-only`` measures it
      for another setting without running anything. The eager loop adds one ``G x params``
      accumulator.
    apply_kwargs: keyword arguments for ``model.apply`` (hashable values).
    return_counts: also return the per-group sample counts ``int32[G]``; to average over
      batches weight each batch's result by its counts (see :func:`weighted_group_mean`).
    max_block_elements: bound on the elements of one per-sample weight-gradient block.
    loss: ``"softmax_cross_entropy"`` (default; ``C - 1`` exact columns) or
      ``"sigmoid_binary_cross_entropy"``: the multi-label loss, summed over the ``A`` attributes
      (``A`` exact columns ``sqrt(p_a (1 - p_a)) e_a``; ``mc`` draws ``y~ ~ Bernoulli(p)`` per
      attribute), design.md section 1.10 (static).
    memory_budget_bytes: bound on the memory of the pass, in bytes; 0: no bound. ``None`` (the
      default): :data:`DEFAULT_MEMORY_BUDGET_BYTES` (2 GiB) for an eager call on inputs that
      sit on one device and without ``chunk_size``; no bound otherwise (under an outer
      ``jax.jit``, for sharded inputs, or with a ``chunk_size``). The whole batch runs at once
      when XLA's compiled memory plan of it (``memory_analysis()``: arguments + outputs +
      temporaries - aliased) fits; else the chunk size is extrapolated from the plans of the
      batch and of one sample and checked on the chosen chunk (:func:`budget_chunk_size`), so
      that one chunk's plan plus the eager loop's ``G x params`` accumulator fits the budget
      (design.md section 1.12); with ``chunk_size`` as well, the smaller chunk wins. The choice
      and its executable are cached per model, shapes and budget: a batch that fits compiles
      once, as without a budget; one that does not, 2-4 programs.
      The user's own batch and variables are not counted. Falls back, with a warning, to
      one-sample chunks when even those exceed the budget, and to the whole batch when the
      backend has no memory plan (``memory_analysis()`` returns None). An explicit budget is
      only for eager calls: under an outer ``jax.jit`` it raises ValueError. ``exact`` /
      ``empirical_fisher`` results do not depend on it.

  Returns:
    A pytree shaped like ``variables["params"]`` whose leaves have a leading axis ``G``:
    ``out[g]`` is group ``g``'s diagonal (zeros for a group without samples); with
    ``return_counts=True`` the tuple ``(out, counts)``. For an NNX module the pytree is the
    pure-dict form of its ``nnx.Param`` state (``fairjax.nnx_adapter.param_dict(model)``).
  """
  if nnx_adapter.is_nnx(model):  # design.md section 1.11: the same pass on a Linen view
    model, variables, bridge = nnx_adapter.to_linen(model, variables, images, apply_kwargs)
    out = per_group_diag(
      model,
      variables,
      images,
      labels,
      groups,
      num_groups=num_groups,
      method=method,
      rng=rng,
      num_samples=num_samples,
      chunk_size=chunk_size,
      apply_kwargs=apply_kwargs,
      return_counts=return_counts,
      max_block_elements=max_block_elements,
      loss=loss,
      memory_budget_bytes=memory_budget_bytes,
    )
    return (bridge.to_nnx(out[0]), out[1]) if return_counts else bridge.to_nnx(out)
  if method not in METHODS:
    raise ValueError(f"method={method!r} is not one of {METHODS}")
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  if method in ("mc", "hutchinson"):
    if rng is None:
      raise ValueError(f"method={method!r} needs rng=jax.random.key(...)")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  _scoring.check_loss(loss)
  label_ndim = 2 if loss == _scoring.SIGMOID else 1
  if (
    images.shape[0] != labels.shape[0]
    or labels.shape[:1] != groups.shape
    or labels.ndim != label_ndim
  ):
    raise ValueError(
      f"images {images.shape}, labels {labels.shape} and groups {groups.shape} "
      "must share the leading batch dimension (labels [N] for "
      f"{_scoring.SOFTMAX!r}, [N, A] for {_scoring.SIGMOID!r})"
    )
  kwargs = dict(
    num_groups=num_groups,
    method=method,
    num_samples=num_samples if method in ("mc", "hutchinson") else 1,
    apply_kwargs=_scoring.freeze(apply_kwargs),
    max_block=max_block_elements,
    grouped_convs=bool(_FAST_GROUPED_CONVS),
    families=frozenset(_FAST_FAMILIES),
    loss=loss,
    tiny_maps=bool(_IM2COL_TINY_MAPS),
  )
  n = images.shape[0]
  # Under an outer transformation any argument may be the traced one (e.g. only the variables).
  traced = any(
    isinstance(a, jax.core.Tracer)
    for a in (images, labels, groups, rng, *jax.tree.leaves(variables))
  )
  compiled = None
  if memory_budget_bytes is None:
    # The default budget: eager calls on one device that chose no chunk themselves.
    single = len(getattr(getattr(images, "sharding", None), "device_set", ())) <= 1
    default = chunk_size is None and not traced and single
    memory_budget_bytes = DEFAULT_MEMORY_BUDGET_BYTES if default else 0
  if memory_budget_bytes:
    if (
      isinstance(memory_budget_bytes, bool)
      or int(memory_budget_bytes) != memory_budget_bytes
      or memory_budget_bytes < 0
    ):
      raise ValueError(f"memory_budget_bytes must be an integer >= 0, got {memory_budget_bytes!r}")
    if traced:
      raise ValueError(
        "memory_budget_bytes needs an eager per_group_diag call (under an outer "
        "jax.jit XLA plans the whole batch at once); pass chunk_size instead"
      )
    if method == "hutchinson" and num_samples > _PROBES_PER_CALL:
      plan_kwargs = dict(kwargs, num_samples=_PROBES_PER_CALL)
    else:
      plan_kwargs = kwargs
    budget_chunk, compiled = budget_chunk_size(
      variables, images, labels, groups, rng, int(memory_budget_bytes), plan_kwargs, model
    )
    if chunk_size is not None and chunk_size < budget_chunk:
      compiled = None
    chunk_size = budget_chunk if chunk_size is None else min(chunk_size, budget_chunk)
    if plan_kwargs is not kwargs or jax.device_count() > 1:
      compiled = None  # other static arguments, or inputs that may be sharded: jit instead
  if method == "hutchinson" and num_samples > _PROBES_PER_CALL and not traced:
    # Probes are unrolled in the program (see _hutchinson_diag); called eagerly, blocks of
    # probes run as separate calls so compile time stays that of one block.
    blocks = [
      min(_PROBES_PER_CALL, num_samples - i) for i in range(0, num_samples, _PROBES_PER_CALL)
    ]
    parts = [
      per_group_diag(
        model,
        variables,
        images,
        labels,
        groups,
        num_groups=num_groups,
        method=method,
        rng=jax.random.fold_in(rng, b),
        num_samples=k,
        chunk_size=chunk_size,
        apply_kwargs=apply_kwargs,
        return_counts=True,
        max_block_elements=max_block_elements,
        loss=loss,
        memory_budget_bytes=0,  # the chunk is chosen above
      )
      for b, k in enumerate(blocks)
    ]
    diag = jax.tree.map(
      lambda *leaves: sum(k * leaf for k, leaf in zip(blocks, leaves)) / num_samples,
      *[d for d, _ in parts],
    )
    return (diag, parts[0][1]) if return_counts else diag
  if chunk_size is None or chunk_size >= n or traced:
    # Under an outer jit the chunks stay inside one XLA program; XLA:CPU then plans buffers
    # for the whole batch, so chunking only bounds memory when called eagerly (below).
    if compiled is not None and compiled[0] == n:  # the budget's own executable for the batch
      diag, counts = compiled[1](variables, images, labels, groups, rng)
    else:
      diag, counts = _per_group_diag(
        model, variables, images, labels, groups, rng, chunk_size=chunk_size, **kwargs
      )
  else:
    executable = compiled[1] if compiled is not None and compiled[0] == chunk_size else None
    diag, counts = _eager_chunks(
      model, variables, images, labels, groups, rng, chunk_size, kwargs, executable
    )
  return (diag, counts) if return_counts else diag


# (model, shapes, static arguments, budget) -> (chunk size, its executable); bounded, oldest
# dropped first. Executables hold no buffers, only code.
_BUDGET_CACHE: dict[Any, tuple] = {}
_BUDGET_CACHE_SIZE = 64


def _plan_bytes(compiled: Any) -> int | None:
  """XLA's planned bytes of a compiled executable: arguments + outputs + temporaries - aliased
  (None where the backend has no plan)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - backend-dependent (NotImplementedError, XlaRuntimeError)
    return None
  if stats is None or not hasattr(stats, "temp_size_in_bytes"):
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def budget_chunk_size(
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  groups: jax.Array,
  rng: jax.Array | None,
  budget: int,
  kwargs: Mapping[str, Any],
  model: nn.Module,
) -> tuple[int, Any]:
  """The largest chunk of samples whose pass fits ``budget`` bytes (design.md section 1.12).

  ``plan(c)`` is XLA's compiled memory plan of one :func:`per_group_diag` call on ``c``
  samples (:func:`_plan_bytes`); with several chunks the eager loop adds one ``G x params``
  accumulator (the size of the output). The whole batch is compiled first: when its plan fits,
  that is the answer and its executable the one to run, so for a batch that fits the budget
  costs no extra compilation. Otherwise the one-sample plan is compiled too, the plan is taken as affine in the
  chunk size through the two (a fixed part: parameters, output; a per-sample part), and the
  chunk it predicts is compiled and its own plan checked; when over, the per-sample cost is
  re-estimated from that plan (secant) and the chunk shrunk, at most 6 times. Chunks are
  balanced (for the same number of chunks, the smallest size), since the last one is padded.
  With no plan on the backend the whole batch is returned (with a warning); when even one
  sample is over the budget, one. Results are cached per model, shapes, static arguments and
  budget.

  Args:
    variables, images, labels, groups, rng: the call's arguments (only shapes and dtypes are
      read).
    budget: bytes, ``> 0``.
    kwargs: the static arguments of the compiled pass (as passed to ``_per_group_diag``).
    model: the Linen module.

  Returns:
    ``(chunk, compiled)``: the chunk size in ``[1, N]``, and ``(size, executable)`` of the
    chunk's compiled pass (call it with the dynamic arguments only), or None.
  """
  n = images.shape[0]
  sds = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
  key = (
    model,
    jax.tree.structure(variables),
    tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(variables)),
    sds(images),
    sds(labels),
    sds(groups),
    rng is None,
    tuple(sorted(kwargs.items())),
    budget,
  )
  if key in _BUDGET_CACHE:
    return _BUDGET_CACHE[key]

  def compile_chunk(c):
    args = (
      variables,
      jax.ShapeDtypeStruct((c,) + images.shape[1:], images.dtype),
      jax.ShapeDtypeStruct((c,) + labels.shape[1:], labels.dtype),
      jax.ShapeDtypeStruct((c,), groups.dtype),
      rng,
    )
    compiled = _per_group_diag.lower(model, *args, chunk_size=None, **kwargs).compile()
    return compiled, _plan_bytes(compiled)

  def below_one_sample(plan):
    warnings.warn(
      f"per_group_diag: memory_budget_bytes={budget} is below the plan of a "
      f"one-sample chunk ({plan} bytes); using one-sample chunks",
      stacklevel=4,
    )

  exe_n, plan_n = compile_chunk(n)
  if plan_n is None:
    warnings.warn(
      "per_group_diag: memory_analysis() gives no memory plan on this backend; "
      "memory_budget_bytes is ignored and the whole batch runs at once",
      stacklevel=3,
    )
    result = (n, None)
  elif plan_n <= budget or n == 1:  # no chunks, no accumulator
    if plan_n > budget:
      below_one_sample(plan_n)
    result = (n, (n, exe_n))
  else:
    exe1, plan1 = compile_chunk(1)
    out = int(exe1.memory_analysis().output_size_in_bytes)  # the eager loop's accumulator

    def balanced(c):
      # Same number of chunks, as equal as possible: the padded last chunk wastes least.
      return -(-n // -(-n // c))

    def guess(slope):
      fixed = plan1 - slope
      return balanced(int(max(1, min(n - 1, (budget - fixed - out) // slope))))

    chunk, last = guess(max((plan_n - plan1) // (n - 1), 1)), (1, exe1)
    for _ in range(6):
      if chunk == 1:
        break
      exe, plan = compile_chunk(chunk)
      last = (chunk, exe)
      if plan + out <= budget:
        break
      chunk = balanced(min(chunk - 1, guess(max((plan - plan1) // (chunk - 1), 1))))
    if chunk == 1 and plan1 + out > budget:
      below_one_sample(plan1 + out)
    result = (chunk, last if last[0] == chunk else (1, exe1) if chunk == 1 else None)
  if len(_BUDGET_CACHE) >= _BUDGET_CACHE_SIZE:
    _BUDGET_CACHE.pop(next(iter(_BUDGET_CACHE)))
  _BUDGET_CACHE[key] = result
  return result


def _eager_chunks(
  model, variables, images, labels, groups, rng, chunk_size, kwargs, executable=None
):
  """One compiled call per chunk of ``chunk_size`` samples: peak memory is one chunk's.

  The last chunk is padded with group ``-1`` rows (they count nowhere) so every call has the
  same shape and compiles once (``_scoring.split_batch``); per-chunk results are combined by
  their group counts, which gives exactly the full batch's per-group mean. The count-weighted
  sum is accumulated as the chunks come (``_scoring.accumulate``: same additions, in the same
  order, as :func:`weighted_group_mean`), so only ONE
  chunk result lives beside the accumulator: keeping all of them would cost ``n / chunk_size``
  copies of ``G x params`` (2.8 GiB for ResNet-18 with 2 groups and 32 chunks).
  """
  batch = {"image": images, "label": labels, "group": groups}

  def chunk_diag(index, chunk):
    key = None if rng is None else jax.random.fold_in(rng, index)
    if executable is not None:  # compiled already (memory budget), same static arguments
      return executable(variables, chunk["image"], chunk["label"], chunk["group"], key)
    return _per_group_diag(
      model,
      variables,
      chunk["image"],
      chunk["label"],
      chunk["group"],
      key,
      chunk_size=None,
      **kwargs,
    )

  diag, counts = _scoring.accumulate(
    chunk_diag,
    _scoring.split_batch(batch, chunk_size),
    caller="per_group_diag",
    weighted=True,
    mean=True,
  )
  return diag, jnp.sum(jnp.stack(counts), axis=0)


def group_counts(groups: jax.Array, num_groups: int) -> jax.Array:
  """Samples per group, ``int32[G]``; ids outside ``[0, G)`` are not counted."""
  return _scoring.group_weights(groups, num_groups, jnp.float32)[1]


def weighted_group_mean(diags: Sequence[PyTree], counts: Sequence[jax.Array]) -> PyTree:
  """Combines per-batch results into the per-group mean over all batches.

  ``out[g] = sum_b counts_b[g] * diag_b[g] / sum_b counts_b[g]`` (zeros where a group never
  appeared), which equals the per-group diagonal of the union of the batches.
  """
  acc = None
  for diag, c in zip(diags, counts, strict=True):
    acc = add_weighted(acc, diag, c)
  return divide_by_counts(acc, counts)


def add_weighted(acc: PyTree | None, diag: PyTree, counts: jax.Array) -> PyTree:
  """Running numerator of :func:`weighted_group_mean`: ``acc + counts[g] * diag[g]``.

  Lets a caller fold batches in as they come (only one batch result alive at a time) and finish
  with :func:`divide_by_counts`; the result equals ``weighted_group_mean`` of the same batches
  exactly (same additions in the same order). ``acc=None`` starts the sum.
  """
  return _scoring.add_weighted(acc, diag, counts)


def divide_by_counts(acc: PyTree, counts: Sequence[jax.Array]) -> PyTree:
  """``acc[g] / sum_b counts_b[g]`` (zero where a group never appeared): the per-group mean."""
  return _scoring.divide_by_counts(acc, counts)
