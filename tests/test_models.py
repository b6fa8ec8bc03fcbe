"""Model zoo: parameter counts vs the papers, shapes, and the CPU fast paths vs plain XLA ops."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tanas_jax import models
from tanas_jax.layers import Conv, extract_patches, max_pool_2x2


def count_params(name, classes=10):
    model = models.build(name, classes)
    spec = models.get_net(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1,) + spec.input_shape), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


@pytest.mark.parametrize("name,paper_millions", [("vgg16", 14.72), ("resnet18", 11.44),
                                                 ("densenet121", 6.95)])
def test_param_counts_match_papers(name, paper_millions):
    # backbone (10 outputs) + Linear(10, 10) task head, as in the authors' code
    n = count_params(name)
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.03, n


def test_tanas_cnn_is_the_paper_net():
    # conv(32,5x5) on 28x28x1 -> dense 1024 -> dense 2
    assert count_params("tanas_cnn", 2) == (5 * 5 * 32 + 32) + (28 * 28 * 32 * 1024 + 1024) + (1024 * 2 + 2)


@pytest.mark.parametrize("name", ["small_cnn", "tanas_cnn", "resnet18"])
def test_forward_shapes_and_eval_is_pure(name):
    spec = models.get_net(name)
    v = models.init(name, 4, jax.random.PRNGKey(0))
    apply = models.make_apply(name, 4)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3,) + spec.input_shape)
    out = apply(v, x)
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, apply(v, x))
    feats = models.make_features(name, 4)(v, x)
    np.testing.assert_allclose(feats @ v["params"]["head"]["kernel"] + v["params"]["head"]["bias"], out,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,stride,dil,groups", [(2, 1, 1, 1), (4, 1, 1, 1), (4, 1, 2, 1), (8, 1, 1, 1),
                                                  (8, 2, 1, 1), (8, 1, 1, 4)])
def test_conv_matches_lax_conv(hw, stride, dil, groups):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, hw, hw, 8))
    conv = Conv(8, (3, 3), strides=stride, kernel_dilation=dil, feature_group_count=groups)
    v = conv.init(jax.random.PRNGKey(1), x)
    ours = conv.apply(v, x)
    # our 'SAME' is torch's symmetric padding=dilation*(k-1)/2 whatever the stride
    pad = ((dil, dil), (dil, dil))
    ref = nn.Conv(8, (3, 3), strides=stride, kernel_dilation=dil, feature_group_count=groups,
                  padding=pad).apply(v, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # gradients agree too (the im2col path is used on <= 4x4 maps)
    g1 = jax.grad(lambda k: (conv.apply({"params": {**v["params"], "kernel": k}}, x) ** 2).sum())(
        v["params"]["kernel"])
    g2 = jax.grad(lambda k: (nn.Conv(8, (3, 3), strides=stride, kernel_dilation=dil,
                                     feature_group_count=groups, padding=pad).apply(
        {"params": {**v["params"], "kernel": k}}, x) ** 2).sum())(v["params"]["kernel"])
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)


def test_extract_patches_matches_conv():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
    p = extract_patches(x, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
    ref = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(p @ k.reshape(-1, 5), ref, rtol=1e-5, atol=1e-5)


def test_reshape_max_pool_matches_reduce_window_and_splits_ties():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), ref)
    tied = jnp.ones((1, 2, 2, 1))
    g = jax.grad(lambda t: max_pool_2x2(t).sum())(tied)
    np.testing.assert_allclose(g, 0.25)      # equal split between exactly tied maxima


def test_unknown_net_is_a_user_error():
    from tanas_jax.errors import UserError

    with pytest.raises(UserError, match="did you mean 'vgg16'"):
        models.get_net("vgg61")
