"""bench/profile_curvature.py: its im2col stand-in for convs on tiny maps, and its HLO reader.

The im2col conv is what the benchmark's ``im2col_tiny`` variant measures (bench/README.md,
"Profile of the exact pass"); it must compute the same convolution as ``lax.conv_general_dilated``
(checked in float64 against the XLA conv). The HLO reader's FLOP counts and labels are checked on
a hand-written module.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

# bench/ is not an installed package: import it from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import profile_curvature as pc  # noqa: E402

pytestmark = pytest.mark.usefixtures("float64")


def _conv_prims(fn, *args) -> int:
  jaxpr = jax.make_jaxpr(fn)(*args)
  return sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.jaxpr.eqns)


@pytest.mark.parametrize(
  "hw, padding",
  [((2, 2), "SAME"), ((1, 1), "SAME"), ((2, 1), ((2, 0), (1, 1)))],
)
def test_im2col_matches_xla_conv_on_tiny_maps(hw, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *hw, 4)))
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)))
  dnums = ("NHWC", "HWIO", "NHWC")
  conv = pc._im2col_conv_factory(lax.conv_general_dilated)

  def got(x, w):
    return conv(x, w, (1, 1), padding, dimension_numbers=dnums)

  def want(x, w):
    return lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=dnums, precision=lax.Precision.HIGHEST
    )

  def value_and_grads(f):
    # The benchmark differentiates through the conv: compare gradients too.
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))

  assert x.dtype == jnp.float64
  assert _conv_prims(got, x, w) == 0  # the im2col path, not a conv
  np.testing.assert_allclose(jax.jit(got)(x, w), want(x, w), rtol=1e-12, atol=1e-12)
  (v_got, g_got), (v_want, g_want) = value_and_grads(got)(x, w), value_and_grads(want)(x, w)
  np.testing.assert_allclose(v_got, v_want, rtol=1e-12)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_im2col_leaves_other_convs_to_xla():
  x = jnp.ones((2, 3, 3, 4))  # 9 positions = 9 taps: not tiny
  w = jnp.ones((3, 3, 4, 5))
  conv = pc._im2col_conv_factory(lax.conv_general_dilated)
  dnums = ("NHWC", "HWIO", "NHWC")
  assert _conv_prims(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=dnums), x, w) == 1
  strided = jnp.ones((2, 2, 2, 4))
  assert (
    _conv_prims(lambda x, w: conv(x, w, (2, 2), "SAME", dimension_numbers=dnums), strided, w) == 1
  )


HLO = """HloModule jit_grad, entry_computation_layout={()}

%fused_computation (param_0: f32[4,3,3,8], param_1: f32[4,2,2,16]) -> f32[8,3,3,16] {
  %param_0 = f32[4,3,3,8]{3,2,1,0} parameter(0)
  %param_1 = f32[4,2,2,16]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[8,3,3,16]{3,2,1,0} convolution(%param_0, %param_1), window={size=2x2 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf
}

ENTRY %main.1 (x: f32[4,2,2,8], k: f32[3,3,8,16], d: f32[16,10]) -> (f32[8,3,3,16], f32[4,10]) {
  %x = f32[4,2,2,8]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %k = f32[3,3,8,16]{3,2,1,0} parameter(1), metadata={op_name="k"}
  %d = f32[16,10]{1,0} parameter(2), metadata={op_name="d"}
  %conv_general_dilated.2 = f32[4,2,2,16]{3,2,1,0} convolution(%k, %x), window={size=2x2 rhs_reversal=1x1}, dim_labels=01fb_o01i->f01b, metadata={op_name="jit(grad)/jvp(VGG11)/conv6/conv_general_dilated"}
  %copy.3 = f32[4,3,3,8]{3,2,1,0} copy(%x)
  %ynn_fusion = f32[8,3,3,16]{3,2,1,0} fusion(%copy.3, %conv_general_dilated.2), kind=kCustom, calls=%fused_computation
  %reduce.4 = f32[4,16]{1,0} reduce(%conv_general_dilated.2), dimensions={1,2}, metadata={op_name="jit(grad)/jvp(VGG11)/reduce_max"}
  %dot.5 = f32[4,10]{1,0} dot(%reduce.4, %d), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(grad)/jvp(VGG11)/fc2/dot_general"}
  ROOT %tuple.6 = (f32[8,3,3,16]{3,2,1,0}, f32[4,10]{1,0}) tuple(%ynn_fusion, %dot.5)
}
"""


def test_hlo_reader_counts_flops_and_labels_instructions():
  ops = pc.entry_ops(HLO, ["conv6", "fc2"])
  swapped = ops["conv_general_dilated.2"]
  assert swapped["category"] == "conv (operand-swapped)"
  assert swapped["flops"] == 2 * (4 * 2 * 2 * 16) * 4 * 8  # out x window x input features
  assert ops["dot.5"]["category"] == "dot"
  assert ops["dot.5"]["flops"] == 2 * 4 * 10 * 16
  assert ops["ynn_fusion"]["category"] == "conv"  # the conv inside its fused computation
  assert ops["ynn_fusion"]["flops"] == 2 * (8 * 3 * 3 * 16) * 4 * 4
  labels = pc.label_ops(ops, "jax_grad")
  assert labels["conv_general_dilated.2"] == ("conv6", "forward")
  assert labels["dot.5"] == ("fc2", "forward")
  # No metadata: inherited from the output it feeds (conv6's gradient), the copy from its user.
  assert labels["ynn_fusion"] == ("conv6", "backward")
  assert labels["copy.3"] == ("conv6", "backward")
  assert labels["reduce.4"] == ("other", "forward")  # pooling stays outside the modules


@pytest.mark.parametrize(
  "op_name, method, want",
  [
    (
      "jit(f)/jit(_per_group_diag)/vmap(jvp(VGG11))/conv3/conv_general_dilated",
      "fairjax_exact",
      ("conv3", "forward"),
    ),
    (
      "jit(f)/jit(_per_group_diag)/vmap(transpose(jvp(VGG11)))/fc1/dot_general",
      "fairjax_exact",
      ("fc1", "column backprop"),
    ),
    (
      f"jit(f)/jit(_per_group_diag)/{pc.SQUARES_SCOPE}/conv7/dot_general",
      "fairjax_exact",
      ("conv7", "squares"),
    ),
    ("jit(f)/jit(_per_group_diag)/log_softmax", "fairjax_exact", ("other", "other")),
    (
      "jit(grad)/transpose(jvp(VGG11))/conv0/conv_general_dilated",
      "jax_grad",
      ("conv0", "backward"),
    ),
  ],
)
def test_classify(op_name, method, want):
  assert pc.classify(op_name, method) == want
