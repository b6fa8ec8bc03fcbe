"""Fixed architectures: the TA-NAS CNN, a small CPU CNN, and CIFAR-style
VGG-16, ResNet-18 and DenseNet-121 (32x32 inputs).

Every net is ``backbone -> head``: the backbone ends in a feature vector and
the head is one ``Dense(num_classes)``, as in the authors' code, where a
10-output backbone is followed by a task head ``Linear(10, c)``.  Parameter
trees are therefore ``{'backbone': ..., 'head': ...}``; the distance code can
compare backbones of nets whose heads differ in class count.

Modules take ``train`` (BatchNorm mode).  In eval mode (``train=False``) the
output is a pure function of ``{'params', 'batch_stats'}`` and the input.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from tanas_jax.layers import Conv, avg_pool_2x2, global_avg_pool, max_pool_2x2

# torch BatchNorm2d defaults (momentum 0.1 == flax 0.9, eps 1e-5)
BatchNorm = partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class TanasCNNBackbone(nn.Module):
    """TA-NAS paper CNN: conv(32, 5x5, pad 2) -> ReLU -> dense 1024 -> ReLU."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(Conv(32, (5, 5), padding=2, name="conv")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(1024, name="fc")(x))


class SmallCNNBackbone(nn.Module):
    """Fast CPU net: 3 x (conv 3x3 -> ReLU -> max-pool 2) -> dense -> ReLU."""

    widths: Sequence[int] = (16, 32, 64)
    feature_dim: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, w in enumerate(self.widths):
            x = max_pool_2x2(nn.relu(Conv(w, (3, 3), name=f"conv{i}")(x)))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.feature_dim, name="fc")(x))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M")


class VGGBackbone(nn.Module):
    """CIFAR VGG (conv-BN-ReLU blocks, 2x2 max-pools) -> Dense(out_features)."""

    cfg: Sequence = VGG16_CFG
    out_features: int = 10
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        i = 0
        for v in self.cfg:
            if v == "M":
                x = max_pool_2x2(x)
                continue
            x = Conv(v, (3, 3), use_bias=True, name=f"conv{i}")(x)
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, name=f"bn{i}")(x)
            x = nn.relu(x)
            i += 1
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.out_features, name="fc")(x)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = Conv(self.features, (3, 3), strides=self.stride, padding=1, use_bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm(use_running_average=not train, name="bn1")(out))
        out = Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv2")(out)
        out = BatchNorm(use_running_average=not train, name="bn2")(out)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), strides=self.stride, padding=0, use_bias=False, name="short_conv")(x)
            x = BatchNorm(use_running_average=not train, name="short_bn")(x)
        return nn.relu(out + x)


class ResNet18Backbone(nn.Module):
    out_features: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(64, (3, 3), padding=1, use_bias=False, name="conv1")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, name="bn1")(x))
        for stage, (feat, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            for b in range(2):
                x = BasicBlock(feat, stride if b == 0 else 1, name=f"layer{stage + 1}_{b}")(x, train)
        x = global_avg_pool(x)
        return nn.Dense(self.out_features, name="fc")(x)


class DenseBottleneck(nn.Module):
    growth: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = nn.relu(BatchNorm(use_running_average=not train, name="bn1")(x))
        out = Conv(4 * self.growth, (1, 1), padding=0, use_bias=False, name="conv1")(out)
        out = nn.relu(BatchNorm(use_running_average=not train, name="bn2")(out))
        out = Conv(self.growth, (3, 3), padding=1, use_bias=False, name="conv2")(out)
        return jnp.concatenate([out, x], axis=-1)


class DenseNet121Backbone(nn.Module):
    """CIFAR DenseNet-121: growth 32, blocks (6, 12, 24, 16), reduction 0.5."""

    blocks: Sequence[int] = (6, 12, 24, 16)
    growth: int = 32
    reduction: float = 0.5
    out_features: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        planes = 2 * self.growth
        x = Conv(planes, (3, 3), padding=1, use_bias=False, name="conv1")(x)
        for i, n in enumerate(self.blocks):
            for j in range(n):
                x = DenseBottleneck(self.growth, name=f"dense{i + 1}_{j}")(x, train)
            planes = x.shape[-1]
            if i < len(self.blocks) - 1:
                out_planes = int(planes * self.reduction)
                x = nn.relu(BatchNorm(use_running_average=not train, name=f"trans{i + 1}_bn")(x))
                x = Conv(out_planes, (1, 1), padding=0, use_bias=False, name=f"trans{i + 1}_conv")(x)
                x = avg_pool_2x2(x)
        x = nn.relu(BatchNorm(use_running_average=not train, name="bn")(x))
        x = global_avg_pool(x)
        return nn.Dense(self.out_features, name="fc")(x)


class Net(nn.Module):
    """``head(backbone(x))``; ``features`` returns the backbone output."""

    backbone: nn.Module
    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes, name="head")

    def features(self, x, train: bool = False):
        return self.backbone(x, train)

    def __call__(self, x, train: bool = False):
        return self.head(self.backbone(x, train))
