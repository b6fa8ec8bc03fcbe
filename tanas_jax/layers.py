"""Base layers shared by the model zoo, the search spaces and the Fisher engine.

This module sits at the bottom of the package (it imports only flax/jax):
``tanas_jax.models``, ``tanas_jax.search`` and ``tanas_jax.fisher`` all import
it, so the Fisher engine recognises these layer types without importing the
model zoo.  It owns the layers with the CPU fast paths measured for this project:

* :class:`Conv` — a drop-in for ``flax.linen.Conv`` (same ``kernel``/``bias``
  parameter names and shapes, NHWC/HWIO) that computes a stride-1 'SAME'
  convolution on small feature maps (H*W <= ``IM2COL_MAX_PIXELS``) as im2col:
  the kh*kw shifted slices of the padded input concatenated on the channel
  axis, then one matmul.  XLA:CPU sends such convolutions to a generic loop
  (512->512 on 2x2, batch 32: ~220 ms); im2col takes ~2-4 ms.  Results agree
  with ``lax.conv_general_dilated`` to float32 rounding (tests/test_models.py).
* :func:`max_pool_2x2` / :func:`avg_pool_2x2` — window 2, stride 2 pooling by
  reshape + reduce.  The backward pass of ``lax.reduce_window`` max-pool is
  ~5x slower on CPU; the reshape form's gradient splits equally between
  exactly tied maxima.  Every model in this package uses these.

The Fisher engine recognises :class:`Conv` and ``flax.linen.Dense`` layers by
type to use its per-layer fast paths; a model built from other layer types
still works through the generic ``vmap(grad)`` path.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IM2COL_MAX_PIXELS = 16


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return tuple(v)  # type: ignore[return-value]


def same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style symmetric 'SAME' padding ``((lo, hi), (lo, hi))`` (extra pixel at the end)."""
    pads = []
    for k, d in zip(kernel, dilation):
        eff = (k - 1) * d + 1
        total = eff - 1
        pads.append((total // 2, total - total // 2))
    return tuple(pads)  # type: ignore[return-value]


def extract_patches(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int],
                    padding, dilation: tuple[int, int]) -> jax.Array:
    """Patches by slicing: (B, Ho, Wo, kh*kw*C) ordered (kh, kw, C) like HWIO.

    ``padding`` is a pair of (lo, hi) pairs.  ``patches @ kernel.reshape(-1,
    cout)`` equals the convolution.  Slicing is 2-2.5x faster on CPU than
    ``lax.conv_general_dilated_patches`` (measured on this project's CPUs).
    """
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilation
    (plo, phi), (qlo, qhi) = padding
    xp = jnp.pad(x, ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))
    h, w = xp.shape[1], xp.shape[2]
    ho = (h - ((kh - 1) * dh + 1)) // sh + 1
    wo = (w - ((kw - 1) * dw + 1)) // sw + 1
    cols = []
    for i in range(kh):
        for j in range(kw):
            sl = xp[:, i * dh: i * dh + (ho - 1) * sh + 1: sh,
                    j * dw: j * dw + (wo - 1) * sw + 1: sw, :]
            cols.append(sl)
    return jnp.concatenate(cols, axis=-1)


def resolve_padding(padding, kernel, dilation):
    """``'SAME'`` / ``'VALID'`` / int / per-axis pads -> ``((lo, hi), (lo, hi))``."""
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return same_padding(kernel, dilation)
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) if not isinstance(p, int) else (p, p) for p in padding)


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO kernel; ``nn.Conv``-compatible params.

    ``feature_group_count`` supports depthwise convolutions (DARTS sep/dil
    convs).  Small maps use im2col (see module docstring).  ``padding='SAME'``
    is PyTorch's symmetric ``padding=dilation*(k-1)//2`` for every stride (XLA's
    'SAME' pads asymmetrically at stride 2), so stride-2 ops match the
    authors' PyTorch cells.
    """

    features: int
    kernel_size: Sequence[int] | int = (3, 3)
    strides: Sequence[int] | int = (1, 1)
    padding: str | int | Sequence = "SAME"
    kernel_dilation: Sequence[int] | int = (1, 1)
    feature_group_count: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = _pair(self.kernel_size)
        strides = _pair(self.strides)
        dilation = _pair(self.kernel_dilation)
        cin = x.shape[-1]
        groups = self.feature_group_count
        k = self.param("kernel", self.kernel_init,
                       (kernel[0], kernel[1], cin // groups, self.features), jnp.float32)
        pad = resolve_padding(self.padding, kernel, dilation)
        h, w = x.shape[1], x.shape[2]
        if groups == 1 and h * w <= IM2COL_MAX_PIXELS and kernel != (1, 1):
            patches = extract_patches(x, kernel, strides, pad, dilation)
            y = patches @ k.reshape(-1, self.features)
        else:
            y = lax.conv_general_dilated(
                x, k, window_strides=strides, padding=pad, rhs_dilation=dilation,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups)
        if self.use_bias:
            b = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + b
        return y


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/stride-2 max pool by reshape (odd trailing row/col dropped, as torch)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/stride-2 average pool by reshape (odd trailing row/col dropped)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: (B, H, W, C) -> (B, C)."""
    return x.mean(axis=(1, 2))
