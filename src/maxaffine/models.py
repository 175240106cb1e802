"""Small reference architectures used by the demo, the experiments and the tests.

Every one of them is a max-affine spline network when its activation is
piecewise affine (the default ReLU); pass another ``activation`` factory (e.g.
``lambda: maxaffine.nn.BetaVQ(beta=0.5)``) to study the same architecture
with soft VQ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

Activation = Callable[[], nn.Module]


def mlp(input_shape: Sequence[int] | int, widths: Sequence[int] = (256, 256),
        num_classes: int = 10, activation: Activation = nn.ReLU) -> nn.Sequential:
    """Flatten -> [Linear -> activation] * len(widths) -> Linear(num_classes)."""
    d = input_shape if isinstance(input_shape, int) else math.prod(input_shape)
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
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must be (C, L) or (C, H, W), got {tuple(input_shape)}")
    two_d = len(input_shape) == 3
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
    pool = pool or (nn.MaxPool2d if two_d else nn.MaxPool1d)
    c, spatial = input_shape[0], list(input_shape[1:])
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(conv(c, out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(bn(out))
        layers += [activation(), pool(2)]
        c, spatial = out, [s // 2 for s in spatial]
    layers += [nn.Flatten(), nn.Linear(c * math.prod(spatial), num_classes)]
    return nn.Sequential(*layers)
