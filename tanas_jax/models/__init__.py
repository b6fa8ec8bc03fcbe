"""The fixed network architectures used as ε-approximation networks: the TA-NAS CNN, a small CPU
CNN, and CIFAR-style VGG-16, ResNet-18 and DenseNet-121.

This package owns the registry (``get_net(name) -> NetSpec``: input size, channels, BatchNorm or
not) and the functions that build, initialise and apply a net.  Every net is ``backbone -> head``
with a one-layer dense head, so parameter trees are ``{'backbone': ..., 'head': ...}``, and a model is
a pure ``apply(variables, x) -> logits`` in evaluation mode, with ``variables = {'params': ...,
'batch_stats': ...}`` (no ``batch_stats`` for nets without BatchNorm).  Networks are built from the
shared layers (``tanas_jax.layers``); the package imports only the foundation modules and never
``data``, ``tasks``, ``train``, ``bank``, ``fisher``, ``distance``, ``search`` or ``cli``.  Cells
built from searched genotypes are not here: they belong to ``tanas_jax.search``, which owns the
genotype format.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from tanas_jax.errors import UserError, did_you_mean
from tanas_jax.models import nets


@dataclass(frozen=True)
class NetSpec:
    name: str
    input_size: int          # images are resized/padded to input_size x input_size
    channels: int            # 1 or 3 (grayscale repeated to 3 when 3)
    make_backbone: Callable[[], nn.Module]
    batch_norm: bool
    description: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)


NETS: dict[str, NetSpec] = {
    "tanas_cnn": NetSpec("tanas_cnn", 28, 1, nets.TanasCNNBackbone, False,
                         "TA-NAS paper CNN: conv 32x5x5 -> dense 1024 -> head (28x28x1)"),
    "small_cnn": NetSpec("small_cnn", 32, 1, nets.SmallCNNBackbone, False,
                         "fast CPU CNN: 3x(conv3x3+pool) 16-32-64 -> dense 64 -> head (32x32x1)"),
    "vgg16": NetSpec("vgg16", 32, 3, nets.VGGBackbone, True,
                     "CIFAR VGG-16 with BatchNorm, 10-output backbone + task head"),
    "resnet18": NetSpec("resnet18", 32, 3, nets.ResNet18Backbone, True,
                        "CIFAR ResNet-18, 10-output backbone + task head"),
    "densenet121": NetSpec("densenet121", 32, 3, nets.DenseNet121Backbone, True,
                           "CIFAR DenseNet-121 (growth 32), 10-output backbone + task head"),
}


def get_net(name: str) -> NetSpec:
    if name not in NETS:
        raise UserError(f"unknown net '{name}': {did_you_mean(name, NETS)}")
    return NETS[name]


def build(name: str, num_classes: int) -> nets.Net:
    spec = get_net(name)
    return nets.Net(backbone=spec.make_backbone(), num_classes=num_classes)


def init(name: str, num_classes: int, rng: jax.Array) -> dict:
    """Initial variables for ``name`` with a ``num_classes`` head."""
    spec = get_net(name)
    model = build(name, num_classes)
    x = jnp.zeros((1,) + spec.input_shape, jnp.float32)
    variables = model.init(rng, x, train=False)
    return jax.tree_util.tree_map(lambda a: a, dict(variables))


def make_apply(name: str, num_classes: int) -> Callable:
    """Eval-mode ``apply(variables, x) -> logits`` (BatchNorm uses running stats)."""
    model = build(name, num_classes)

    def apply(variables, x):
        return model.apply(variables, x, train=False)

    return apply


def make_features(name: str, num_classes: int) -> Callable:
    """Eval-mode ``features(variables, x) -> backbone output`` (penultimate layer)."""
    model = build(name, num_classes)

    def features(variables, x):
        return model.apply(variables, x, train=False, method=nets.Net.features)

    return features


def param_count(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
