"""Cell operations with DARTS semantics, NHWC, ``C`` channels in and out.

Public API (reused by DARTS/TETLO, issue 7)::

    make_op(op, C, stride, name=None, depthwise='slices') -> flax.linen.Module   # __call__(x, train)
    OPS (tanas_jax.search.genotype.OPS), PARAMETRIC_OPS

Every op maps ``(B, H, W, C)`` to ``(B, H, W, C)`` with ``stride=1`` and to
``(B, ceil(H/2), ceil(W/2), C)`` with ``stride=2`` (reduction cells).

=================  ============================================================
``none``           zeros (DARTS ``Zero``; stride 2 subsamples first)
``skip_connect``   identity; stride 2: ``FactorizedReduce`` (ReLU, two 1x1
                   stride-2 convs on x and x shifted by one pixel, concat, BN)
``max_pool_3x3``   3x3 max pool, padding 1 (padded values never win)
``avg_pool_3x3``   3x3 average pool, padding 1, ``count_include_pad=False``
``sep_conv_kxk``   (ReLU, depthwise kxk stride s, 1x1, BN) then
                   (ReLU, depthwise kxk, 1x1, BN); k = 3, 5, 7
``dil_conv_kxk``   ReLU, depthwise kxk dilation 2 stride s, 1x1, BN; k = 3, 5
``conv_7x1_1x7``   ReLU, conv 1x7 stride (1,s), conv 7x1 stride (s,1), BN
=================  ============================================================

BatchNorm is ``affine=False`` as in the authors' code and DARTS search
(torch defaults: momentum 0.1, eps 1e-5); ``train=True`` uses batch statistics
and updates ``batch_stats``, ``train=False`` uses the running averages.

CPU fast paths (measured on the project's 2-core x86 CPUs, jax 0.10.2, batch
64, 32x32x16, forward+backward; script in ``benchmarks/fuse_step.py --ops``):

* 3x3 pools (stride 1 or 2) are the max / sum of the 9 shifted (strided)
  slices of the padded input.  ``lax.reduce_window`` max: fwd 2.4 ms,
  fwd+bwd 47 ms; slices: fwd 0.6 ms, fwd+bwd 37 ms.  Average pool: 3.9 ms vs
  1.3 ms.  The gradient of a slice-max splits equally between exactly tied
  maxima (``jnp.maximum``), like ``layers.max_pool_2x2``.
* Depthwise convolutions are the weighted sum of the k*k shifted slices,
  with a custom VJP (:func:`depthwise_conv`: a fori_loop over the taps;
  sep_conv_7x7 fwd+bwd at batch 64, 28x28x3: compile 7.5 -> 1.9 s, run
  175 -> 58 ms vs autodiff of the slices)
  (kernel ``(k, k, 1, C)``, the layout of a grouped ``nn.Conv``): 24 ms vs
  59 ms for ``feature_group_count=C`` (input and kernel gradients).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from tanas_jax.layers import Conv

PARAMETRIC_OPS = ("skip_connect@stride2", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
                  "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7")

BatchNormNoAffine = partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, use_bias=False, use_scale=False)


def _out_size(n: int, stride: int) -> int:
    return -(-n // stride)


def _shifted_slices(xp, k: int, stride: int, dilation: int, ho: int, wo: int):
    """Yield (i, j, slice) of the padded input for each kernel tap."""
    for i in range(k):
        for j in range(k):
            yield i, j, xp[:, i * dilation: i * dilation + (ho - 1) * stride + 1: stride,
                           j * dilation: j * dilation + (wo - 1) * stride + 1: stride, :]


def max_pool_3x3(x, stride: int = 1):
    """3x3 max pool, padding 1, by the max of 9 shifted slices (fast on CPU)."""
    b, h, w, c = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    out = None
    for _, _, s in _shifted_slices(xp, 3, stride, 1, ho, wo):
        out = s if out is None else jnp.maximum(out, s)
    return out


def avg_pool_3x3(x, stride: int = 1):
    """3x3 average pool, padding 1, padded cells not counted (DARTS)."""
    b, h, w, c = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    total = sum(s for _, _, s in _shifted_slices(xp, 3, stride, 1, ho, wo))
    ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    count = sum(s for _, _, s in _shifted_slices(ones, 3, stride, 1, ho, wo))
    return total / count


def _depthwise_fwd_impl(x, kern, k: int, s: int, d: int):
    """``y[b,h,w,c] = sum_ij xp[b, i*d + h*s, j*d + w*s, c] * kern[i,j,0,c]`` by slices."""
    b, h, w, c = x.shape
    pad = (k - 1) * d // 2
    ho, wo = _out_size(h, s), _out_size(w, s)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = None
    for i, j, sl in _shifted_slices(xp, k, s, d, ho, wo):
        t = sl * kern[i, j, 0]
        out = t if out is None else out + t
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv(x, kern, k: int, s: int, d: int):
    """Depthwise kxk conv (stride s, dilation d, padding (k-1)*d/2), kernel (k, k, 1, C).

    Forward and backward are both sums of k*k shifted slices (custom VJP):
    the autodiff transpose of the forward's slices is k*k full-size pads,
    which XLA CPU compiles slowly (sep_conv_7x7, batch 64, 28x28x3:
    fwd+bwd compile 3.2 s, run 54 ms vs fwd 0.3 s / 2.6 ms).

    * ``dkern[i,j,0,c] = sum_{b,h,w} xp[b, i*d + h*s, j*d + w*s, c] dy[b,h,w,c]``
    * ``dx = sum_ij dyq[:, (k-1-i)*d : +H, (k-1-j)*d : +W] * kern[i,j,0]`` where
      ``dyq`` is ``dy`` dilated by ``s`` (interior padding s-1) and padded by
      ``(k-1)*d - pad`` before and ``H + pad - (ho-1)*s - 1`` after: the
      correlation with the flipped kernel (the transposed conv).
    """
    return _depthwise_fwd_impl(x, kern, k, s, d)


def _depthwise_fwd(x, kern, k, s, d):
    return _depthwise_fwd_impl(x, kern, k, s, d), (x, kern)


def _depthwise_bwd(k, s, d, res, dy):
    # A fori_loop over the k*k taps with dynamic slices: one loop body to
    # compile whatever k is (unrolled taps compile k*k XLA fusions each).
    x, kern = res
    b, h, w, c = x.shape
    pad = (k - 1) * d // 2
    ho, wo = _out_size(h, s), _out_size(w, s)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    lo = (k - 1) * d - pad
    zero = jnp.zeros((), dy.dtype)
    dyq = jax.lax.pad(dy, zero, ((0, 0, 0), (lo, h + pad - (ho - 1) * s - 1, s - 1),
                                 (lo, w + pad - (wo - 1) * s - 1, s - 1), (0, 0, 0)))
    kflat = jnp.asarray(kern).reshape(k * k, c)
    span_h, span_w = (ho - 1) * s + 1, (wo - 1) * s + 1

    def tap(t, carry):
        dx, dk = carry
        i, j = t // k, t % k
        sl = jax.lax.dynamic_slice(xp, (0, i * d, j * d, 0), (b, span_h, span_w, c))[:, ::s, ::s, :]
        dk = dk.at[t].set(jnp.sum(sl * dy, axis=(0, 1, 2)))
        g = jax.lax.dynamic_slice(dyq, (0, (k - 1 - i) * d, (k - 1 - j) * d, 0), (b, h, w, c))
        return dx + g * kflat[t], dk

    dx, dk = jax.lax.fori_loop(0, k * k, tap, (jnp.zeros_like(x), jnp.zeros((k * k, c), kern.dtype)))
    return dx.astype(x.dtype), dk.reshape(k, k, 1, c)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


DEPTHWISE_IMPLS = ("slices", "dense", "grouped")


class DepthwiseConv(nn.Module):
    """Depthwise kxk conv ('SAME'-style padding (k-1)*d/2), no bias; kernel ``(k, k, 1, C)`` (the
    layout of a grouped ``nn.Conv`` with ``feature_group_count=C``) whatever the ``impl``:

    * ``'slices'`` (default, cell networks): the weighted sum of the k*k shifted
      slices, :func:`depthwise_conv` -- fast for one op;
    * ``'dense'`` (the DARTS supernet): ONE ``lax.conv_general_dilated`` with the
      block-diagonal kernel ``kern ⊗ I_C`` (C times the flops, but Eigen's dense
      conv: 2-6 ms vs 6-35 ms for the grouped conv for C = 3..8, 20x20, batch 32,
      fwd+bwd, compile ~0.1 s).  A supernet holding every op of the standard
      space as slices has thousands of slice ops, and XLA took minutes (3.5 min
      for one weight step, 2 shared cores) to compile it;
    * ``'grouped'``: ``lax.conv_general_dilated`` with ``feature_group_count=C``.

    The three have the same parameter and output; tests check they agree.
    """

    kernel_size: int
    strides: int = 1
    dilation: int = 1
    impl: str = "slices"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        k, s, d = self.kernel_size, self.strides, self.dilation
        kern = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        if self.impl == "slices":
            return depthwise_conv(x, kern, k, s, d)
        if self.impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise impl {self.impl!r}; valid: {', '.join(DEPTHWISE_IMPLS)}")
        kern = kern.astype(x.dtype)
        pad = (k - 1) * d // 2
        if self.impl == "dense":
            kern, groups = kern[:, :, 0, :, None] * jnp.eye(c, dtype=x.dtype), 1
        else:
            groups = c
        return jax.lax.conv_general_dilated(x, kern, (s, s), [(pad, pad), (pad, pad)],
                                            rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)


class Zero(nn.Module):
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        return jnp.zeros_like(x)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return x


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (on x and x shifted by 1), concat, BN."""

    C: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(x)
        a = x[:, ::2, ::2, :]
        bshift = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))[:, ::2, ::2, :]
        c1 = self.C // 2
        y = jnp.concatenate([nn.Dense(c1, use_bias=False, name="conv_1")(a),
                             nn.Dense(self.C - c1, use_bias=False, name="conv_2")(bshift)], axis=-1)
        return BatchNormNoAffine(use_running_average=not train, name="bn")(y)


class Pool(nn.Module):
    kind: str  # 'max' | 'avg'
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = max_pool_3x3 if self.kind == "max" else avg_pool_3x3
        return f(x, self.stride)


class ReLUConvBN(nn.Module):
    """ReLU -> 1x1 conv -> BN (DARTS preprocessing between cells)."""

    C: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Dense(self.C, use_bias=False, name="conv")(nn.relu(x))
        return BatchNormNoAffine(use_running_average=not train, name="bn")(y)


class DilConv(nn.Module):
    """ReLU -> depthwise kxk (dilation d, stride s; :class:`DepthwiseConv` ``impl``) -> 1x1 -> BN."""

    C: int
    kernel_size: int
    stride: int = 1
    dilation: int = 2
    depthwise: str = "slices"

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = DepthwiseConv(self.kernel_size, self.stride, self.dilation, self.depthwise, name="dw")(nn.relu(x))
        y = nn.Dense(self.C, use_bias=False, name="pw")(y)
        return BatchNormNoAffine(use_running_average=not train, name="bn")(y)


class SepConv(nn.Module):
    """Two DilConv(dilation 1) blocks, the first with the stride (DARTS)."""

    C: int
    kernel_size: int
    stride: int = 1
    depthwise: str = "slices"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = DilConv(self.C, self.kernel_size, self.stride, 1, self.depthwise, name="block1")(x, train)
        return DilConv(self.C, self.kernel_size, 1, 1, self.depthwise, name="block2")(x, train)


class Conv7x1_1x7(nn.Module):
    """ReLU -> conv 1x7 (stride (1,s)) -> conv 7x1 (stride (s,1)) -> BN."""

    C: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.stride
        y = Conv(self.C, (1, 7), strides=(1, s), use_bias=False, name="conv_1x7")(nn.relu(x))
        y = Conv(self.C, (7, 1), strides=(s, 1), use_bias=False, name="conv_7x1")(y)
        return BatchNormNoAffine(use_running_average=not train, name="bn")(y)


def make_op(op: str, C: int, stride: int = 1, name: str | None = None, depthwise: str = "slices") -> nn.Module:
    """The op ``op`` (canonical name, see genotype.OPS) for C channels.

    ``stride`` is 1 or 2; ``depthwise`` is the :class:`DepthwiseConv` ``impl`` of
    the sep/dil convs (same parameters whatever the impl).  Returns an unbound flax module whose
    ``__call__(x, train=False)`` maps NHWC ``C`` channels to ``C`` channels.
    """
    from tanas_jax.search.genotype import canonical_op

    op = canonical_op(op)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    kw = {} if name is None else {"name": name}
    if op == "none":
        return Zero(stride, **kw)
    if op == "skip_connect":
        return Identity(**kw) if stride == 1 else FactorizedReduce(C, **kw)
    if op == "max_pool_3x3":
        return Pool("max", stride, **kw)
    if op == "avg_pool_3x3":
        return Pool("avg", stride, **kw)
    if op.startswith("sep_conv_"):
        return SepConv(C, int(op[-1]), stride, depthwise, **kw)
    if op.startswith("dil_conv_"):
        return DilConv(C, int(op[-1]), stride, 2, depthwise, **kw)
    if op == "conv_7x1_1x7":
        return Conv7x1_1x7(C, stride, **kw)
    raise AssertionError(op)  # every canonical op is handled above
