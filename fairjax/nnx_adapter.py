"""Flax NNX models in fairjax's scorers: an ``nnx.Module`` seen as a Linen module (design.md
section 1.11).

Every scorer of fairjax (:func:`fairjax.curvature.per_group_diag`, FairPrune's
``average_group_diag``, SNIP/OBD, FairGRAPE's importance) is written for a Linen module and its
``variables``. This module lets them take an ``nnx.Module`` instead, without a second copy of any
kernel: :func:`to_linen` splits the module (``nnx.split``) into its graph definition, its
``nnx.Param`` state and its other state (``BatchStat``, RNG state...), and returns a small Linen
module whose ``apply`` merges them back (``nnx.merge``) and calls the NNX module. Results shaped
like the Linen params are mapped back to the **pure-dict form of the NNX param state**, the
nested dict of ``nnx.state(model, nnx.Param).to_pure_dict()`` (attribute names, integer indices
for ``nnx.List`` entries, array leaves): it works with ``jax.tree.map`` next to
:func:`param_dict`, and with :mod:`fairjax.masks` (``None`` leaves), and
``state.replace_by_pure_dict`` turns a per-group slice back into an ``nnx.State``.

Fast paths. The closed forms of :mod:`fairjax.curvature` recognise Linen ``nn.Dense`` /
``nn.Conv`` calls through ``flax.linen.intercept_methods``, which never sees NNX calls. So every
plain ``nnx.Linear`` and ``nnx.Conv`` (the stock ``__call__``, default ``dot_general`` /
``conv_general_dilated`` / ``promote_dtype``, no mask, no ``preferred_element_type``) is
*routed*: while the wrapper runs, a call of that very instance (by identity) is answered by a
Linen ``nn.Dense`` / ``nn.Conv`` child with the same configuration and the same weights, which
the curvature pass then recognises as usual. The wrapper's params are therefore
``{"<layer path, dot-joined>": {"kernel", "bias"}, ..., "rest": <pure dict of every other
Param>}``. A routed layer's own NNX weights are not read by the forward (its Linen child's are);
if the model reads them some other way (weight tying, ``layer.kernel[...]`` in user code), an
abstract trace finds out when the bridge is built and that layer is not routed, so results stay
exact. The routing patches ``nnx.Linear.__call__`` / ``nnx.Conv.__call__`` only while a wrapper
is being traced (a lock-counted context; other instances fall through to the stock method).

A kernel-level module (design.md section 0): it imports jax and flax only, no other fairjax
module.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from jax.extend import core as jax_core

PyTree = Any
NNXPath = tuple[Any, ...]

REST = "rest"  # the wrapper's param holding every NNX Param that is not in a routed layer
_OTHER = "nnx_state"  # collection holding the non-Param NNX state (BatchStat, RNG state...)
_ROUTED = "nnx_routed"  # collection only used by the read check of _unread_layers

_LINEAR_CALL = nnx.Linear.__call__
_CONV_CALL = nnx.Conv.__call__
_DEFAULT_LINEAR_PROMOTE = inspect.signature(nnx.Linear.__init__).parameters["promote_dtype"].default
_DEFAULT_CONV_PROMOTE = inspect.signature(nnx.Conv.__init__).parameters["promote_dtype"].default


def is_nnx(model: Any) -> bool:
  """True for an ``flax.nnx.Module`` (then the scorers go through :func:`to_linen`)."""
  return isinstance(model, nnx.Module)


def param_dict(model: nnx.Module) -> dict:
  """The pure-dict form of the module's ``nnx.Param`` state: the layout of every result the
  scorers return for an NNX module (and of the masks they take)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ------------------------------------------------------------------------------------ routing

_routes: contextvars.ContextVar[dict[int, Any]] = contextvars.ContextVar(
  "fairjax_nnx_routes", default={}
)
_patch_lock = threading.Lock()
_patch_depth = 0


def _routed_linear_call(self, inputs, *args, **kwargs):
  route = _routes.get().get(id(self))
  if route is None or args or kwargs:
    return _LINEAR_CALL(self, inputs, *args, **kwargs)
  return route(inputs)


def _routed_conv_call(self, inputs, *args, **kwargs):
  route = _routes.get().get(id(self))
  if route is None or args or kwargs:
    return _CONV_CALL(self, inputs, *args, **kwargs)
  return route(inputs)


@contextlib.contextmanager
def _routing(routes: dict[int, Any]):
  """Sends calls of the given NNX layer instances (by ``id``) to Linen children meanwhile."""
  global _patch_depth
  with _patch_lock:
    if _patch_depth == 0:
      nnx.Linear.__call__ = _routed_linear_call
      nnx.Conv.__call__ = _routed_conv_call
    _patch_depth += 1
  token = _routes.set({**_routes.get(), **routes})
  try:
    yield
  finally:
    _routes.reset(token)
    with _patch_lock:
      _patch_depth -= 1
      if _patch_depth == 0:
        nnx.Linear.__call__ = _LINEAR_CALL
        nnx.Conv.__call__ = _CONV_CALL


def _linen_twin(node: Any) -> tuple[str, tuple[tuple[str, Any], ...]] | None:
  """``(kind, Linen constructor kwargs)`` of a routable NNX layer, else None."""
  if type(node).__call__ is _LINEAR_CALL and isinstance(node, nnx.Linear):
    if (
      node.dot_general is not jax.lax.dot_general
      or node.preferred_element_type is not None
      or node.promote_dtype is not _DEFAULT_LINEAR_PROMOTE
    ):
      return None
    return "dense", (
      ("features", node.out_features),
      ("use_bias", node.use_bias),
      ("dtype", node.dtype),
      ("param_dtype", node.param_dtype),
      ("precision", node.precision),
    )
  if type(node).__call__ is _CONV_CALL and isinstance(node, nnx.Conv):
    if (
      node.conv_general_dilated is not jax.lax.conv_general_dilated
      or node.mask is not None
      or node.preferred_element_type is not None
      or node.promote_dtype is not _DEFAULT_CONV_PROMOTE
    ):
      return None
    padding = node.padding
    if not isinstance(padding, (str, int)):
      padding = tuple(p if isinstance(p, int) else tuple(p) for p in padding)
    hashable = lambda v: v if isinstance(v, (int, type(None))) else tuple(v)  # noqa: E731
    return "conv", (
      ("features", node.out_features),
      ("kernel_size", tuple(node.kernel_size)),
      ("strides", hashable(node.strides)),
      ("padding", padding),
      ("input_dilation", hashable(node.input_dilation)),
      ("kernel_dilation", hashable(node.kernel_dilation)),
      ("feature_group_count", node.feature_group_count),
      ("use_bias", node.use_bias),
      ("dtype", node.dtype),
      ("param_dtype", node.param_dtype),
      ("precision", node.precision),
    )
  return None


# ------------------------------------------------------------------------------------- bridge


@dataclasses.dataclass(frozen=True)
class Bridge:
  """How an NNX module's state maps onto the Linen wrapper's variables (static, hashable).

  Attributes:
    graphdef: ``nnx.split``'s graph definition.
    param_def, other_def: tree definitions of the ``nnx.Param`` state and of the rest.
    param_paths: NNX path of every Param leaf, in ``param_def``'s leaf order.
    param_shapes: ``(shape, dtype)`` of every Param leaf, same order.
    routed: ``(child name, NNX layer path, kind, Linen kwargs)`` of every routed layer.
  """

  graphdef: Any
  param_def: Any
  other_def: Any
  param_paths: tuple[NNXPath, ...]
  param_shapes: tuple[tuple[tuple[int, ...], Any], ...]
  routed: tuple[tuple[str, NNXPath, str, tuple[tuple[str, Any], ...]], ...]

  def _linen_path(self, path: NNXPath) -> tuple[Any, ...]:
    for name, layer, _, _ in self.routed:
      if path[:-1] == layer:
        return (name, path[-1])
    return (REST,) + tuple(path)

  def to_linen(self, tree: Mapping) -> dict:
    """A pytree in the NNX pure-dict layout (e.g. a mask, ``None`` leaves allowed) in the
    wrapper's ``params`` layout."""
    flat = traverse_util.flatten_dict(dict(tree), keep_empty_nodes=True)
    return traverse_util.unflatten_dict({self._linen_path(p): v for p, v in flat.items()})

  def to_nnx(self, tree: Mapping) -> dict:
    """A pytree in the wrapper's ``params`` layout (e.g. a per-group diagonal with leaves
    ``[G, *shape]``) in the NNX pure-dict layout."""
    by_linen = {self._linen_path(p): p for p in self.param_paths}
    flat = traverse_util.flatten_dict(dict(tree), keep_empty_nodes=True)
    return traverse_util.unflatten_dict({by_linen.get(p, p): v for p, v in flat.items()})


class NNXAsLinen(nn.Module):
  """Linen view of an NNX module (see the module docstring); built by :func:`to_linen`.

  ``apply(variables, x, **kwargs)`` merges the NNX module from ``variables`` and returns
  ``module(x, **kwargs)``, with routed layers answered by Linen children.
  """

  bridge: Bridge

  @nn.compact
  def __call__(self, x, **kwargs):
    b = self.bridge
    routed_layers = {layer: name for name, layer, _, _ in b.routed}
    leaves = [None] * len(b.param_paths)
    rest_paths = [i for i, p in enumerate(b.param_paths) if p[:-1] not in routed_layers]
    if rest_paths:
      template = traverse_util.unflatten_dict(
        {b.param_paths[i]: jnp.zeros(*b.param_shapes[i]) for i in rest_paths}
      )
      flat = traverse_util.flatten_dict(self.param(REST, lambda _: template))
      for i in rest_paths:
        leaves[i] = flat[b.param_paths[i]]
    dup = self.variables.get(_ROUTED, {})
    for i, path in enumerate(b.param_paths):
      if leaves[i] is None:  # a routed layer's own weights: unused, see _unread_layers
        leaves[i] = dup.get(str(i), jnp.zeros(*b.param_shapes[i]))
    other = self.variables.get(_OTHER, {})
    other_leaves = [other[str(i)] for i in range(len(other))]
    module = nnx.merge(
      b.graphdef,
      jax.tree.unflatten(b.param_def, leaves),
      jax.tree.unflatten(b.other_def, other_leaves),
    )
    children = {
      name: (nn.Dense if kind == "dense" else nn.Conv)(**dict(cfg), name=name)
      for name, _, kind, cfg in b.routed
    }
    nodes = dict(nnx.iter_graph(module))
    routes = {id(nodes[layer]): children[name] for layer, name in routed_layers.items()}
    with _routing(routes):
      return module(x, **kwargs)


def _check_inference_mode(model: nnx.Module) -> None:
  for path, node in nnx.iter_graph(model):
    where = ".".join(str(p) for p in path) or "the model"
    if isinstance(node, nnx.BatchNorm) and not node.use_running_average:
      raise ValueError(
        f"nnx.BatchNorm at {where} uses batch statistics, which couple the "
        "samples; call model.eval() (or set use_running_average=True) first"
      )
    if isinstance(node, nnx.Dropout) and not node.deterministic and node.rate > 0:
      raise ValueError(f"nnx.Dropout at {where} is active; call model.eval() first")


def _build(model: nnx.Module, route: bool, skip: frozenset = frozenset()) -> tuple[Bridge, dict]:
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  with_paths, param_def = jax.tree_util.tree_flatten_with_path(params)
  param_paths = tuple(tuple(path) for path, _ in nnx.to_flat_state(params))
  param_leaves = [leaf for _, leaf in with_paths]
  # The leaf order of the State pytree must be that of its flat paths (it is in flax 0.12).
  keys = tuple(
    tuple(getattr(k, "key", getattr(k, "idx", None)) for k in kp[:-1]) for kp, _ in with_paths
  )
  if keys != param_paths:
    raise ValueError(
      "fairjax cannot map this nnx.Module's Param state onto its leaves "
      f"(flax {flax.__version__}); please report it"
    )
  owned: dict[NNXPath, set] = {}
  for path in param_paths:
    owned.setdefault(path[:-1], set()).add(path[-1])
  routed = []
  if route:
    names = set()
    for path, node in nnx.iter_graph(model):
      twin = _linen_twin(node)
      name = ".".join(str(p) for p in path)
      if twin is None or not path or path in skip or name == REST or name in names:
        continue
      expected = {"kernel", "bias"} if node.use_bias else {"kernel"}
      if owned.get(tuple(path)) != expected:
        continue
      names.add(name)
      routed.append((name, tuple(path), twin[0], twin[1]))
  other_leaves, other_def = jax.tree.flatten(other)
  bridge = Bridge(
    graphdef,
    param_def,
    other_def,
    param_paths,
    tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in param_leaves),
    tuple(routed),
  )
  pure = traverse_util.unflatten_dict(dict(zip(param_paths, param_leaves)))
  variables = {"params": bridge.to_linen(pure)}
  if other_leaves:
    variables[_OTHER] = {str(i): x for i, x in enumerate(other_leaves)}
  return bridge, variables


def _unread_layers(
  bridge: Bridge, variables: dict, example: jax.ShapeDtypeStruct, kwargs: Mapping[str, Any]
) -> frozenset:
  """NNX paths of routed layers whose own weights the forward reads (not only by calling the
  layer): one abstract trace with those weights as separate inputs."""
  routed_layers = {layer for _, layer, _, _ in bridge.routed}
  index = [i for i, p in enumerate(bridge.param_paths) if p[:-1] in routed_layers]
  if not index:
    return frozenset()
  dup = {str(i): jax.ShapeDtypeStruct(*bridge.param_shapes[i]) for i in index}
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), variables
  )
  module = NNXAsLinen(bridge)
  closed = jax.make_jaxpr(lambda d, v, x: module.apply({**v, _ROUTED: d}, x, **kwargs))(
    dup, abstract, example
  )
  jaxpr = closed.jaxpr
  n_dup = len(jax.tree.leaves(dup))
  dup_vars = dict(zip(jaxpr.invars[:n_dup], sorted(dup)))  # dict leaves flatten in key order
  used = {v for eqn in jaxpr.eqns for v in eqn.invars if isinstance(v, jax_core.Var)}
  used |= {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  return frozenset(bridge.param_paths[int(dup_vars[v])][:-1] for v in dup_vars if v in used)


# False routes no layer: every parameter takes the generic per-sample path (private; for tests
# and bench/curvature.py, read at call time like curvature._FAST_GROUPED_CONVS).
_ROUTE_LAYERS = True

_BRIDGES: dict[Any, tuple[Bridge, frozenset]] = {}


def to_linen(
  model: nnx.Module,
  variables: Any,
  images: jax.Array,
  apply_kwargs: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
  *,
  fast_paths: bool | None = None,
) -> tuple[NNXAsLinen, dict, Bridge]:
  """An NNX module as ``(linen_module, linen_variables, bridge)`` for the Linen scorers.

  Args:
    model: an ``nnx.Module`` mapping ``images`` to logits; its current state is used. It must
      be in inference mode (``model.eval()``: BatchNorm on running averages, Dropout off).
    variables: must be ``None`` (the module carries its state; ``nnx.update`` it to score other
      weights). Any other value raises ``ValueError``.
    images: ``[N, ...]`` example batch (only its per-sample shape and dtype are used, for the
      read check of the routed layers).
    apply_kwargs: keyword arguments of the module's ``__call__`` (hashable values).
    fast_paths: ``False`` routes no layer, so every parameter takes the generic per-sample path
      of :mod:`fairjax.curvature` (for comparison and timing); ``None`` reads the module flag
      ``_ROUTE_LAYERS`` (default ``True``).

  Returns:
    The Linen module (hashable, a valid static argument of ``jax.jit``; equal for equal graph
    definitions, so compiled scorers are reused across calls), its variables and the
    :class:`Bridge` whose ``to_nnx`` / ``to_linen`` convert results and masks.
  """
  if variables is not None:
    raise ValueError(
      "for an nnx.Module pass variables=None: the module carries its own state "
      "(use nnx.update to score other weights)"
    )
  _check_inference_mode(model)
  fast_paths = _ROUTE_LAYERS if fast_paths is None else fast_paths
  kwargs = dict(apply_kwargs.items() if isinstance(apply_kwargs, Mapping) else (apply_kwargs or ()))
  bridge, linen_variables = _build(model, fast_paths)
  example = jax.ShapeDtypeStruct((1,) + tuple(images.shape[1:]), images.dtype)
  key = (bridge, example.shape, example.dtype, tuple(sorted(kwargs.items())))
  if key not in _BRIDGES:
    skip = _unread_layers(bridge, linen_variables, example, kwargs)
    _BRIDGES[key] = (_build(model, fast_paths, skip)[0] if skip else bridge, skip)
  final, skip = _BRIDGES[key]
  if skip:
    linen_variables = _build(model, fast_paths, skip)[1]
  return NNXAsLinen(final), linen_variables, final


_F = TypeVar("_F", bound=Callable[..., Any])


def accepts_nnx(scorer: _F) -> _F:
  """Lets a Linen scorer take an ``nnx.Module`` too (design.md section 1.11).

  ``scorer(model, variables, images, ..., [mask], ..., [apply_kwargs=...])`` is written for a
  Linen module; the decorated function, given an ``nnx.Module`` (and ``variables=None``), calls
  it on :func:`to_linen`'s view with every other argument unchanged, a ``mask`` argument in
  the layout of :func:`param_dict` converted to the view's layout, and maps the result (a
  params-shaped pytree) back to that layout. A Linen module goes straight through. Forwarding
  the whole bound signature means no keyword argument can be dropped on the NNX route.
  """
  signature = inspect.signature(scorer)

  @functools.wraps(scorer)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    bound = signature.bind(*args, **kwargs)
    arguments = bound.arguments
    if not is_nnx(arguments["model"]):
      return scorer(*args, **kwargs)
    model, variables, bridge = to_linen(
      arguments["model"],
      arguments["variables"],
      arguments["images"],
      arguments.get("apply_kwargs"),
    )
    arguments["model"], arguments["variables"] = model, variables
    if "mask" in arguments:
      arguments["mask"] = bridge.to_linen(arguments["mask"])
    return bridge.to_nnx(scorer(*bound.args, **bound.kwargs))

  return wrapper  # type: ignore[return-value]
