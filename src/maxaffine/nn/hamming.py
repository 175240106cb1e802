"""Generalized Hamming layers (Fan, "Revisit Fuzzy Neural Network: Demystifying
Batch Normalization and ReLU with Generalized Hamming Network", NeurIPS 2017).

The generalized Hamming distance between an input ``x`` and a weight vector
``w`` (n entries) is the sum of fuzzy XORs

    g(x, w) = sum_i ( x_i + w_i - 2 x_i w_i ).

A GH neuron outputs ``h = -g(x, w) / 2 = <w, x> - (sum_i w_i + sum_i x_i) / 2``:
an ordinary neuron whose bias is *analytic*, ``-(sum w + sum x) / 2``, instead of
learned, and with no batch-norm (Fan's claim: batch-norm learns an approximation
of this bias). Since ``g`` is affine in ``x``, so is ``h``: a GH layer is an affine
layer, and with a piecewise-affine threshold after it a max-affine spline
operator that :func:`maxaffine.trace` handles like any other.

Thresholding ("ReLU as a minimal Hamming distance"). Writing
``g = n/2 - 2 <x - 1/2, w - 1/2>`` shows that ``g = n/2`` is the chance level:
the distance to an uninformative weight ``w = 1/2``. We threshold ``h`` around
``c = -n/4`` (the value of ``h`` at ``g = n/2``):

* ``threshold="single"``: ``ReLU(h - c - margin)``, the unit fires when the input is
  closer than chance (``g < n/2 - 2 margin``);
* ``threshold="double"`` (double thresholding, keeps both tails):
  ``ReLU(h - c - margin) - ReLU(c - h - margin)``: strongly similar inputs give a
  positive output, strongly complementary ones (``g > n/2 + 2 margin``) a negative
  one, and the fuzzy middle is suppressed. ``margin = 0`` makes it the identity
  ``h - c`` (no ReLU at all, which Fan reports is enough for MNIST);
* ``threshold="none"``: ``h`` itself (e.g. for the logits).

``margin`` is a fixed hyperparameter, not a learned bias. Weights start at
``1/2 + U(-1/sqrt(n), 1/sqrt(n))`` (fuzzy "don't care" plus the usual small
perturbation), so that ``h - c = <x - 1/2, w - 1/2>`` starts at a sensible scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _arguments as arg
from ..errors import MaxAffineError, MaxAffineTypeError
from ..models import sizes, stage_sizes

Threshold = Literal["single", "double", "none"]
_THRESHOLDS = ("single", "double", "none")


def fuzzy_xor(x: Tensor, w: Tensor) -> Tensor:
    """The fuzzy XOR ``x + w - 2 x w`` elementwise (Fan 2017); equal to XOR on {0, 1}."""
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, Tensor):
            raise MaxAffineTypeError(f"fuzzy_xor takes tensors, got {type(t).__name__} for "
                                     f"{name}")
    try:
        torch.broadcast_shapes(x.shape, w.shape)
    except RuntimeError as err:
        raise MaxAffineError(f"fuzzy_xor: x of shape {tuple(x.shape)} and w of shape "
                             f"{tuple(w.shape)} do not broadcast ({err})") from None
    return x + w - 2 * x * w


def _pair(v: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    pair = sizes(v, name, minimum=minimum)
    if len(pair) not in (1, 2):
        raise MaxAffineError(f"{name} must be an int or a pair (h, w), got {v!r}")
    return (pair[0], pair[-1])


def _check_threshold(threshold: str, margin: float) -> tuple[str, float]:
    threshold = arg.choice(threshold, "threshold", _THRESHOLDS)
    margin = arg.number(margin, "margin", minimum=0.0,
                        meaning="the dead zone around the chance-level distance")
    return threshold, margin


class _GHBase(nn.Module):
    weight: nn.Parameter

    def _setup(self, threshold: str, margin: float, fan_in: int) -> None:
        threshold, margin = _check_threshold(threshold, margin)
        self.threshold, self.margin, self.fan_in = threshold, float(margin), fan_in
        bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound).add_(0.5)

    @property
    def centre(self) -> float:
        """``-n/4``: the output ``h`` at the chance-level distance ``g = n/2``."""
        return -self.fan_in / 4

    def _threshold(self, h: Tensor) -> Tensor:
        if self.threshold == "none":
            return h
        u = h - self.centre
        if self.threshold == "single":
            return F.relu(u - self.margin)
        return F.relu(u - self.margin) - F.relu(-u - self.margin)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold!r}, margin={self.margin}, analytic bias"


class GHLinear(_GHBase):
    """A generalized Hamming layer: ``h_j = <w_j, x> - (sum_i w_ji + sum_i x_i) / 2
    = -g(x, w_j) / 2`` for each of the ``out_features`` units (Fan 2017), then the
    threshold (``"single"``, ``"double"`` or ``"none"``, see the module docstring).
    No learned bias, no batch-norm: the only parameter is ``weight``
    (out_features, in_features).
    """

    def __init__(self, in_features: int, out_features: int, *,
                 threshold: Threshold = "single", margin: float = 0.0) -> None:
        super().__init__()
        in_features = arg.integer(in_features, "in_features", minimum=1)
        out_features = arg.integer(out_features, "out_features", minimum=1)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._setup(threshold, margin, in_features)

    def hamming(self, x: Tensor) -> Tensor:
        """``h = -g(x, w) / 2`` before thresholding, (..., out_features)."""
        self._check_input(x)
        w = self.weight
        # <w, x> - sum(x)/2 = <w - 1/2, x>: one matmul for both input terms.
        return F.linear(x, w - 0.5) - 0.5 * w.sum(1)

    def forward(self, x: Tensor) -> Tensor:
        return self._threshold(self.hamming(x))

    def _check_input(self, x: Tensor) -> None:
        me = f"GHLinear({self.in_features}, {self.out_features})"
        # checked on real tensors only: torch.fx traces this method with proxies
        if arg.layer_input(x, me, dtype=self.weight.dtype) and (
                x.dim() == 0 or x.shape[-1] != self.in_features):
            raise MaxAffineError(f"{me} takes inputs (..., {self.in_features}), got shape "
                                 f"{tuple(x.shape)}: flatten the input or set in_features")

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + super().extra_repr()


class GHConv2d(_GHBase):
    """The convolutional generalized Hamming layer: each output pixel is
    ``-g(p, w) / 2`` for the zero-padded input patch ``p`` under the filter ``w``
    (n = in_channels * kh * kw entries; padded entries are x = 0 and still count
    their ``w_i`` in the distance), then the threshold. No learned bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *,
                 threshold: Threshold = "single", margin: float = 0.0) -> None:
        super().__init__()
        in_channels = arg.integer(in_channels, "in_channels", minimum=1)
        out_channels = arg.integer(out_channels, "out_channels", minimum=1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self._setup(threshold, margin, in_channels * math.prod(self.kernel_size))

    def hamming(self, x: Tensor) -> Tensor:
        """``h = -g(patch, w) / 2`` per output pixel before thresholding."""
        self._check_input(x)
        w = self.weight
        h = F.conv2d(x, w - 0.5, None, self.stride, self.padding)
        return h - 0.5 * w.sum((1, 2, 3)).view(-1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self._threshold(self.hamming(x))

    def _check_input(self, x: Tensor) -> None:
        me = f"GHConv2d({self.in_channels}, {self.out_channels}, {self.kernel_size})"
        arg.image_input(x, me, self.in_channels, self.kernel_size, self.padding,
                        self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, " + super().extra_repr())


class GHN(nn.Sequential):
    """A generalized Hamming network (Fan 2017): no learned biases, no batch-norm.

    MLP (``channels=()``): Flatten -> [GHLinear -> threshold] per entry of
    ``widths`` -> GHLinear(num_classes, threshold="none").
    CNN (``channels`` non-empty, images (C, H, W)): [GHConv2d(kernel_size,
    'same' padding) -> threshold -> MaxPool2d(2)] per entry of ``channels``, then
    Flatten and the MLP part (``widths`` hidden layers, then the logits).
    ``threshold`` / ``margin`` apply to every hidden layer. The same layout as
    :func:`maxaffine.models.mlp` / :func:`maxaffine.models.small_cnn`, so the
    two can be compared layer for layer.
    """

    def __init__(self, input_shape: Sequence[int] | int, num_classes: int = 10, *,
                 widths: Sequence[int] = (256, 256), channels: Sequence[int] = (),
                 kernel_size: int = 3, threshold: Threshold = "single",
                 margin: float = 0.0) -> None:
        shape = sizes(input_shape, "input_shape")
        num_classes = arg.integer(num_classes, "num_classes", minimum=1)
        widths, channels = sizes(widths, "widths"), sizes(channels, "channels")
        kernel_size = arg.integer(kernel_size, "kernel_size", minimum=1)
        threshold, margin = _check_threshold(threshold, margin)
        layers: list[nn.Module] = []
        if channels:
            if len(shape) != 3:
                raise MaxAffineError(f"a GHN CNN (channels={channels}) needs images (C, H, W), "
                                     f"got input_shape {shape}: pass channels=() for an MLP")
            spatial = stage_sizes(shape, channels, kernel_size)
            c = shape[0]
            for out in channels:
                layers += [GHConv2d(c, out, kernel_size, padding=kernel_size // 2,
                                    threshold=threshold, margin=margin), nn.MaxPool2d(2)]
                c = out
            d = c * math.prod(spatial)
        else:
            d = math.prod(shape)
        layers.append(nn.Flatten())
        for w in widths:
            layers.append(GHLinear(d, w, threshold=threshold, margin=margin))
            d = w
        layers.append(GHLinear(d, num_classes, threshold="none"))
        super().__init__(*layers)


__all__ = ["GHN", "GHConv2d", "GHLinear", "fuzzy_xor"]
