"""Small reference architectures used by the demo, the experiments and the tests.

Every one of them is a max-affine spline network when its activation is
piecewise affine (the default ReLU); pass another ``activation`` factory (e.g.
``lambda: maxaffine.nn.BetaVQ(beta=0.5)``) to study the same architecture
with soft VQ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError

Activation = Callable[[], nn.Module]


def sizes(value: Any, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """A shape-like argument (an int, or a sequence of ints each >= ``minimum``) as a
    tuple; errors name the argument and the bad entry."""
    if isinstance(value, str | bytes) or not isinstance(value, int | Iterable):
        raise MaxAffineTypeError(f"{name} must be a sequence of integers (e.g. (1, 28, 28) or "
                                 f"(64, 64)), got {type(value).__name__} {value!r}")
    items = [value] if isinstance(value, int) else list(value)
    return tuple(arg.integer(v, f"{name}[{i}]" if not isinstance(value, int) else name,
                             minimum=minimum) for i, v in enumerate(items))


def stage_sizes(input_shape: tuple[int, ...], channels: Sequence[int], kernel_size: int = 3,
                name: str = "input_shape") -> list[int]:
    """Spatial sizes after each [conv(kernel_size, padding kernel_size // 2) -> 2x2
    max-pool] stage of ``channels``; a map too small for the next stage's pooling
    raises an error that says how many stages the input allows."""
    spatial = list(input_shape[1:])
    current = spatial
    for i in range(len(channels)):
        conv = [s + 2 * (kernel_size // 2) - kernel_size + 1 for s in current]
        if min(conv) < 2:
            size = "x".join(map(str, spatial))
            now = "x".join(map(str, conv))
            raise MaxAffineError(
                f"{name} {tuple(input_shape)}: a {size} input is too small for "
                f"{len(channels)} conv + max-pool stages (channels={tuple(channels)}): "
                f"stage {i + 1}'s conv output is {now}, too small for a max-pool of 2 (at "
                f"least 2 per side); this input allows at most {i} stage(s): pass at most "
                f"{i} entries in channels" + (" (channels=() for an MLP)" if i == 0 else "")
                + " or a larger input")
        current = [c // 2 for c in conv]
    return current


def mlp(input_shape: Sequence[int] | int, widths: Sequence[int] = (256, 256),
        num_classes: int = 10, activation: Activation = nn.ReLU) -> nn.Sequential:
    """Flatten -> [Linear -> activation] * len(widths) -> Linear(num_classes)."""
    d = math.prod(sizes(input_shape, "input_shape"))
    widths = sizes(widths, "widths")
    num_classes = arg.integer(num_classes, "num_classes", minimum=1)
    _check_factory(activation, "activation")
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(d, w), activation()]
        d = w
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def small_cnn(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
              channels: Sequence[int] = (16, 32), activation: Activation = nn.ReLU,
              batchnorm: bool = True, pool: Callable[[int], nn.Module] | None = None,
              ) -> nn.Sequential:
    """[Conv(3, pad 1) -> BatchNorm -> activation -> MaxPool(2)] per entry of
    ``channels``, then Flatten -> Linear(num_classes). 1-D inputs (C, L) get
    Conv1d / MaxPool1d, images (C, H, W) Conv2d / MaxPool2d. ``pool(k)`` replaces
    the max-pool factory (e.g. a beta-VQ pool)."""
    input_shape = sizes(input_shape, "input_shape")
    if len(input_shape) not in (2, 3):
        raise MaxAffineError(f"input_shape must be (C, L) or (C, H, W), got {input_shape}: "
                             "flat inputs take maxaffine.models.mlp")
    channels = sizes(channels, "channels")
    num_classes = arg.integer(num_classes, "num_classes", minimum=1)
    batchnorm = arg.flag(batchnorm, "batchnorm")
    _check_factory(activation, "activation")
    if pool is not None:
        _check_factory(pool, "pool")
    spatial = stage_sizes(input_shape, channels)
    two_d = len(input_shape) == 3
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
    pool = pool or (nn.MaxPool2d if two_d else nn.MaxPool1d)
    c = input_shape[0]
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(conv(c, out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(bn(out))
        layers += [activation(), pool(2)]
        c = out
    layers += [nn.Flatten(), nn.Linear(c * math.prod(spatial), num_classes)]
    return nn.Sequential(*layers)


def _check_factory(factory: Any, name: str) -> None:
    if not callable(factory) or isinstance(factory, nn.Module):
        raise MaxAffineTypeError(f"{name} must be a factory making a new module per layer (a "
                                 f"class such as nn.ReLU, or a lambda), got "
                                 f"{type(factory).__name__}")
