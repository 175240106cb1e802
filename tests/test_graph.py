"""The spline graph: every registered op against torch.func.jacfwd, tracing of random
architectures, names, and the plan-once contract (nothing written on the model)."""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
import maxaffine.nn as man
from maxaffine import ops
from strategies import INPUT_KINDS, architectures

DT = torch.float64


class Fn(nn.Module):
    """A model whose forward is one inline function (traced through by torch.fx) of
    the input and some constant tensors (buffers)."""

    def __init__(self, fn: Callable[..., Tensor], *constants: Tensor):
        super().__init__()
        self.fn = fn
        self.count = len(constants)
        for i, c in enumerate(constants):
            self.register_buffer(f"c{i}", c)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, *(getattr(self, f"c{i}") for i in range(self.count)))


Rand = Callable[..., Tensor]


@dataclass(frozen=True)
class OpCase:
    """One row of the op table: ``build(r)`` returns a model exercising ``target`` (``r``
    draws seeded Gaussian constants); ``traced_as``: the target torch.fx records, when
    it differs (aliases); ``scale``: input scale reaching every piece."""

    target: Any
    build: Callable[[Rand], nn.Module]
    shape: tuple[int, ...]
    scale: float = 1.0
    dtype: torch.dtype = DT
    traced_as: Any = None
    jac_tol: float | None = None  # where torch's own derivative is rounded


def fn(f: Callable[[Tensor], Tensor]) -> Callable[[Rand], nn.Module]:
    return lambda r: Fn(f)


def seq(*layers: Callable[[], nn.Module]) -> Callable[[Rand], nn.Module]:
    return lambda r: nn.Sequential(*(layer() for layer in layers))


def with_stats(bn: nn.Module, r: Rand) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.copy_(r(bn.num_features))
        bn.running_var.copy_(r(bn.num_features).abs() + 0.5)
        bn.weight.copy_(r(bn.num_features))
        bn.bias.copy_(r(bn.num_features))
    return bn.eval()


def prelu(r: Rand) -> nn.Module:
    m = nn.PReLU(3)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.25, -0.5, 2.0]))
    return m


# One row per registered target (STYLE.md: adding an op costs one entry here).
OPS: list[OpCase] = [
    # ---- affine modules
    OpCase(nn.Linear, lambda r: nn.Linear(6, 3), (6,)),
    OpCase(nn.Conv1d, lambda r: nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2,
                                          groups=2), (2, 9)),
    OpCase(nn.Conv2d, lambda r: nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2),
                                          dilation=(1, 2), groups=2), (2, 5, 6)),
    OpCase(nn.Conv3d, lambda r: nn.Conv3d(1, 2, 2, padding=1), (1, 2, 3, 3)),
    OpCase(nn.ConvTranspose1d, lambda r: nn.ConvTranspose1d(2, 3, 3, stride=2), (2, 4)),
    OpCase(nn.ConvTranspose2d, lambda r: nn.ConvTranspose2d(2, 1, 2, stride=2), (2, 3, 2)),
    OpCase(nn.AvgPool1d, lambda r: nn.AvgPool1d(3, 2, 1), (2, 7)),
    OpCase(nn.AvgPool2d, lambda r: nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                count_include_pad=False), (2, 5, 6)),
    OpCase(nn.AdaptiveAvgPool1d, lambda r: nn.AdaptiveAvgPool1d(3), (2, 7)),
    OpCase(nn.AdaptiveAvgPool2d, lambda r: nn.AdaptiveAvgPool2d((2, 3)), (2, 5, 7)),
    OpCase(nn.Flatten, lambda r: nn.Flatten(), (2, 3, 2)),
    OpCase(nn.Unflatten, lambda r: nn.Unflatten(1, (2, 3)), (6,)),
    OpCase(nn.Identity, lambda r: nn.Identity(), (4,)),
    OpCase(nn.ZeroPad1d, lambda r: nn.ZeroPad1d((1, 2)), (2, 4)),
    OpCase(nn.ZeroPad2d, lambda r: nn.ZeroPad2d((1, 0, 2, 1)), (1, 3, 3)),
    OpCase(nn.ConstantPad1d, lambda r: nn.ConstantPad1d(2, 0.5), (2, 4)),
    OpCase(nn.ConstantPad2d, lambda r: nn.ConstantPad2d((1, 0, 2, 1), -1.5), (1, 3, 3)),
    OpCase(nn.BatchNorm1d, lambda r: with_stats(nn.BatchNorm1d(3), r), (3, 5)),
    OpCase(nn.BatchNorm2d, lambda r: with_stats(nn.BatchNorm2d(2), r), (2, 3, 3)),
    OpCase(nn.Dropout, lambda r: nn.Dropout(0.5), (4,)),
    OpCase(nn.Dropout1d, lambda r: nn.Dropout1d(0.5), (2, 4)),
    OpCase(nn.Dropout2d, lambda r: nn.Dropout2d(0.5), (2, 3, 3)),
    OpCase(nn.AlphaDropout, lambda r: nn.AlphaDropout(0.5), (4,)),
    # ---- affine functions
    OpCase(F.linear, lambda r: Fn(lambda x, w, b: F.linear(x, w, b), r(3, 6), r(3)), (6,)),
    OpCase(F.conv1d, lambda r: Fn(lambda x, w, b: F.conv1d(
        x, w, b, stride=2, padding=1, groups=2), r(4, 1, 3), r(4)), (2, 7)),
    OpCase(F.conv2d, lambda r: Fn(lambda x, w: F.conv2d(
        x, w, None, 1, 1, 2), r(2, 2, 2, 2)), (2, 4, 5)),
    OpCase(F.avg_pool1d, fn(lambda x: F.avg_pool1d(x, 3, 2, 1)), (2, 7)),
    OpCase(F.avg_pool2d, fn(lambda x: F.avg_pool2d(x, 2, ceil_mode=True,
                                                   count_include_pad=False)), (1, 5, 5)),
    OpCase(F.adaptive_avg_pool1d, fn(lambda x: F.adaptive_avg_pool1d(x, 3)), (2, 7)),
    OpCase(F.adaptive_avg_pool2d, fn(lambda x: F.adaptive_avg_pool2d(x, (2, 2))), (1, 5, 3)),
    OpCase(F.pad, fn(lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect")), (1, 4, 4)),
    OpCase(torch.flatten, fn(lambda x: torch.flatten(x, 1)), (2, 3)),
    OpCase(torch.reshape, fn(lambda x: torch.reshape(x, (-1, 3, 2))), (6,)),
    OpCase(torch.squeeze, fn(lambda x: torch.squeeze(x, 2)), (3, 1, 2)),
    OpCase(torch.unsqueeze, fn(lambda x: torch.unsqueeze(x, 1)), (3,)),
    OpCase(torch.transpose, fn(lambda x: torch.transpose(x, 1, 2)), (2, 3)),
    OpCase(torch.permute, fn(lambda x: torch.permute(x, (0, 2, 1))), (2, 3)),
    OpCase(torch.mean, fn(lambda x: torch.mean(x, dim=2)), (2, 3)),
    OpCase(torch.sum, fn(lambda x: torch.sum(x, dim=(1, 2))), (2, 3)),
    OpCase(torch.neg, fn(lambda x: torch.neg(x)), (3,)),
    OpCase(operator.neg, fn(lambda x: -x), (3,)),
    OpCase(operator.pos, fn(lambda x: +x), (3,)),
    OpCase(operator.getitem, fn(lambda x: x[:, 1:3, ::2]), (4, 5)),
    OpCase(F.batch_norm, lambda r: Fn(
        lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=False),
        r(3), r(3).abs() + 0.5, r(3), r(3)), (3, 4)),
    OpCase(F.dropout, fn(lambda x: F.dropout(x, 0.3, training=False)), (4,)),
    OpCase(operator.add, fn(lambda x: x[:, :3] + x[:, 3:] + 1.5), (6,)),
    OpCase(operator.sub, fn(lambda x: x[:, :3] - 2 * x[:, 3:]), (6,)),
    OpCase(torch.add, fn(lambda x: torch.add(x, 2 * x, alpha=2)), (3,)),
    OpCase(torch.sub, fn(lambda x: torch.sub(x, 1.0)), (3,)),
    OpCase(torch.cat, fn(lambda x: torch.cat([x, 2 * x], 1)), (3,)),
    OpCase(torch.concat, fn(lambda x: torch.concat([x, -x], 1)), (3,)),
    OpCase(torch.stack, fn(lambda x: torch.stack([x, x * 3], 1)), (3,)),
    OpCase(operator.mul, lambda r: Fn(lambda x, c: c * (x * 3), r(3)), (3,)),
    OpCase(torch.mul, lambda r: Fn(lambda x, c: torch.mul(x, c), r(3)), (3,)),
    OpCase(operator.matmul, lambda r: Fn(lambda x, w: x @ w, r(4, 2)), (4,)),
    OpCase(torch.matmul, lambda r: Fn(lambda x, w: torch.matmul(x, w), r(4, 2)), (4,)),
    OpCase(operator.truediv, fn(lambda x: x / 4), (3,)),
    OpCase(torch.div, fn(lambda x: torch.div(x, 2.5)), (3,)),
    # ---- Tensor methods
    OpCase("view", fn(lambda x: x.view(x.size(0), -1)), (2, 3)),
    OpCase("reshape", fn(lambda x: x.reshape(x.shape[0], 3, 2)), (6,)),
    OpCase("flatten", fn(lambda x: x.flatten(1)), (2, 3)),
    OpCase("unflatten", fn(lambda x: x.unflatten(1, (2, 3))), (6,)),
    OpCase("permute", fn(lambda x: x.permute(0, 2, 1)), (2, 3)),
    OpCase("transpose", fn(lambda x: x.transpose(1, 2)), (2, 3)),
    OpCase("contiguous", fn(lambda x: x.transpose(1, 2).contiguous()), (2, 3)),
    OpCase("squeeze", fn(lambda x: x.squeeze(1)), (1, 3)),
    OpCase("unsqueeze", fn(lambda x: x.unsqueeze(-1)), (3,)),
    OpCase("mean", fn(lambda x: x.mean(1)), (3, 2)),
    OpCase("sum", fn(lambda x: x.sum(-1, keepdim=True)), (3, 2)),
    OpCase("neg", fn(lambda x: x.neg()), (3,)),
    OpCase("expand", fn(lambda x: x.unsqueeze(1).expand(-1, 3, -1)), (2,)),
    OpCase("expand_as", fn(lambda x: x[:, :1].expand_as(x) - x), (3,)),
    OpCase("view_as", fn(lambda x: x[:, 2:].view_as(x[:, :2]) + x[:, :2]), (4,)),
    OpCase("reshape_as", fn(lambda x: x.reshape(-1, 2, 2).sum(1).reshape_as(x[:, 2:])), (4,)),
    OpCase("repeat", fn(lambda x: x.repeat(1, 2)), (3,)),
    OpCase("clone", fn(lambda x: x.clone()), (3,)),
    OpCase("chunk", fn(lambda x: x.chunk(2, 1)[0] - x.chunk(2, 1)[1]), (4,)),
    OpCase("split", fn(lambda x: x.split(1, 1)[1]), (3,)),
    OpCase("narrow", fn(lambda x: x.narrow(1, 1, 2)), (4,)),
    OpCase("float", fn(lambda x: x.float()), (3,), dtype=torch.float32),
    OpCase("double", fn(lambda x: x.double()), (3,)),
    OpCase("to", fn(lambda x: x.to(torch.float64)), (3,)),
    OpCase("add", fn(lambda x: x.add(x, alpha=0.5)), (3,)),
    OpCase("sub", fn(lambda x: x.sub(1.0)), (3,)),
    OpCase("mul", fn(lambda x: x.mul(2.0)), (3,)),
    OpCase("matmul", lambda r: Fn(lambda x, w: x.matmul(w), r(3, 2)), (3,)),
    OpCase("div", fn(lambda x: x.div(3.0)), (3,)),
    # ---- affine ops added for issue 13 (each linear in the input; checked here)
    OpCase(nn.ConvTranspose3d, lambda r: nn.ConvTranspose3d(2, 1, 2, stride=2), (2, 2, 2, 2)),
    OpCase(nn.AvgPool3d, lambda r: nn.AvgPool3d(2, 1), (1, 3, 3, 3)),
    OpCase(nn.AdaptiveAvgPool3d, lambda r: nn.AdaptiveAvgPool3d((1, 2, 2)), (1, 3, 3, 3)),
    OpCase(nn.ZeroPad3d, lambda r: nn.ZeroPad3d(1), (1, 2, 2, 2)),
    OpCase(nn.ConstantPad3d, lambda r: nn.ConstantPad3d((1, 0, 0, 1, 1, 0), 0.5), (1, 2, 2, 2)),
    OpCase(nn.ReflectionPad1d, lambda r: nn.ReflectionPad1d(2), (2, 4)),
    OpCase(nn.ReflectionPad2d, lambda r: nn.ReflectionPad2d((1, 2, 0, 1)), (1, 3, 4)),
    OpCase(nn.ReflectionPad3d, lambda r: nn.ReflectionPad3d(1), (1, 2, 3, 3)),
    OpCase(nn.ReplicationPad1d, lambda r: nn.ReplicationPad1d((2, 1)), (2, 3)),
    OpCase(nn.ReplicationPad2d, lambda r: nn.ReplicationPad2d(1), (1, 2, 3)),
    OpCase(nn.ReplicationPad3d, lambda r: nn.ReplicationPad3d((1, 0, 1, 0, 0, 1)), (1, 2, 2, 2)),
    OpCase(nn.CircularPad1d, lambda r: nn.CircularPad1d(2), (2, 3)),
    OpCase(nn.CircularPad2d, lambda r: nn.CircularPad2d((1, 0, 1, 1)), (1, 2, 3)),
    OpCase(nn.CircularPad3d, lambda r: nn.CircularPad3d(1), (1, 2, 2, 2)),
    OpCase(nn.Upsample, lambda r: nn.Upsample(scale_factor=2), (1, 2, 3)),
    OpCase(nn.UpsamplingNearest2d, lambda r: nn.UpsamplingNearest2d(size=(3, 5)), (1, 2, 3)),
    OpCase(nn.UpsamplingBilinear2d, lambda r: nn.UpsamplingBilinear2d(scale_factor=2),
           (1, 2, 3)),
    OpCase(nn.PixelShuffle, lambda r: nn.PixelShuffle(2), (4, 2, 3)),
    OpCase(nn.PixelUnshuffle, lambda r: nn.PixelUnshuffle(2), (1, 4, 2)),
    OpCase(nn.ChannelShuffle, lambda r: nn.ChannelShuffle(2), (4, 2, 2)),
    OpCase(nn.Fold, lambda r: nn.Fold((3, 4), 2), (4, 6)),
    OpCase(nn.Unfold, lambda r: nn.Unfold(2, padding=1, stride=2), (1, 3, 4)),
    OpCase(nn.Dropout3d, lambda r: nn.Dropout3d(0.5), (2, 2, 2, 2)),
    OpCase(nn.FeatureAlphaDropout, lambda r: nn.FeatureAlphaDropout(0.5), (2, 3, 3)),
    OpCase(nn.BatchNorm3d, lambda r: with_stats(nn.BatchNorm3d(2), r), (2, 2, 2, 2)),
    OpCase(F.conv3d, lambda r: Fn(lambda x, w: F.conv3d(x, w, padding=1), r(2, 1, 2, 2, 2)),
           (1, 3, 3, 3)),
    OpCase(F.conv_transpose1d, lambda r: Fn(lambda x, w, b: F.conv_transpose1d(
        x, w, b, stride=2), r(2, 3, 3), r(3)), (2, 4)),
    OpCase(F.conv_transpose2d, lambda r: Fn(lambda x, w: F.conv_transpose2d(
        x, w, None, 2, 1, 1), r(1, 2, 3, 3)), (1, 3, 3)),
    OpCase(F.conv_transpose3d, lambda r: Fn(lambda x, w: F.conv_transpose3d(x, w),
                                            r(1, 1, 2, 2, 2)), (1, 2, 2, 2)),
    OpCase(F.avg_pool3d, fn(lambda x: F.avg_pool3d(x, 2, 1)), (1, 3, 3, 3)),
    OpCase(F.adaptive_avg_pool3d, fn(lambda x: F.adaptive_avg_pool3d(x, 2)), (1, 3, 3, 3)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(x, scale_factor=2)), (1, 2, 3)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(x, size=5, mode="linear")), (2, 3)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(
        x, scale_factor=(2, 1.5), mode="bilinear", antialias=True)), (1, 3, 4)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(
        x, size=(4, 5), mode="bicubic", align_corners=True)), (1, 3, 3)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(x, size=(2, 2), mode="area")),
           (1, 5, 4)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(x, scale_factor=1.5,
                                                     mode="nearest-exact")), (1, 3, 3)),
    OpCase(F.interpolate, fn(lambda x: F.interpolate(x, size=(3, 2, 4), mode="trilinear")),
           (1, 2, 2, 2)),
    # the deprecated F.upsample* are traced through into F.interpolate
    OpCase(F.interpolate, fn(lambda x: F.upsample_nearest(x, scale_factor=2)), (1, 2, 2)),
    OpCase(F.interpolate, fn(lambda x: F.upsample_bilinear(x, size=(3, 4))), (1, 2, 2)),
    OpCase(F.pixel_shuffle, fn(lambda x: F.pixel_shuffle(x, 2)), (4, 2, 2)),
    OpCase(F.pixel_unshuffle, fn(lambda x: F.pixel_unshuffle(x, 2)), (1, 4, 4)),
    OpCase(F.channel_shuffle, fn(lambda x: F.channel_shuffle(x, 3)), (6, 2)),
    OpCase(F.fold, fn(lambda x: F.fold(x, (3, 3), 2)), (4, 4)),
    OpCase(F.unfold, fn(lambda x: F.unfold(x, 2, padding=1)), (1, 3, 3)),
    OpCase(F.dropout1d, fn(lambda x: F.dropout1d(x, 0.3, training=False)), (2, 4)),
    OpCase(F.dropout2d, fn(lambda x: F.dropout2d(x, 0.3, False)), (2, 3, 3)),
    OpCase(F.dropout3d, fn(lambda x: F.dropout3d(x, training=False)), (2, 2, 2, 2)),
    OpCase(torch.flip, fn(lambda x: torch.flip(x, [1, 2])), (2, 3)),
    OpCase(torch.fliplr, fn(lambda x: torch.fliplr(x)), (2, 3)),
    OpCase(torch.roll, fn(lambda x: torch.roll(x, (1, -1), (1, 2))), (2, 3)),
    OpCase(torch.rot90, fn(lambda x: torch.rot90(x, 1, [1, 2])), (2, 3)),
    OpCase(torch.narrow, fn(lambda x: torch.narrow(x, 1, 1, 2)), (4,)),
    OpCase(torch.select, fn(lambda x: torch.select(x, 1, 2)), (3, 2)),
    OpCase(torch.movedim, fn(lambda x: torch.movedim(x, 1, 2)), (2, 3)),
    OpCase(torch.moveaxis, fn(lambda x: torch.moveaxis(x, 2, 1)), (2, 3)),
    OpCase(torch.swapaxes, fn(lambda x: torch.swapaxes(x, 1, 2)), (2, 3)),
    OpCase(torch.swapdims, fn(lambda x: torch.swapdims(x, 2, 1)), (2, 3)),
    OpCase(torch.split, fn(lambda x: torch.split(x, 2, 1)[1]), (5,)),
    OpCase(torch.chunk, fn(lambda x: torch.chunk(x, 2, 1)[0] - torch.chunk(x, 2, 1)[1]), (4,)),
    OpCase(torch.tensor_split, fn(lambda x: torch.tensor_split(x, 3, 1)[2]), (7,)),
    OpCase(torch.unbind, fn(lambda x: torch.unbind(x, 1)[0] + torch.unbind(x, 1)[2]), (3, 2)),
    OpCase(torch.hstack, fn(lambda x: torch.hstack([x, 2 * x])), (3,)),
    OpCase(torch.tile, fn(lambda x: torch.tile(x, (1, 2))), (3,)),
    OpCase(torch.repeat_interleave, fn(lambda x: torch.repeat_interleave(x, 2, 1)), (3,)),
    OpCase(torch.broadcast_to, fn(lambda x: torch.broadcast_to(
        x.unsqueeze(1), (x.shape[0], 3, 2))), (2,)),
    OpCase(torch.cumsum, fn(lambda x: torch.cumsum(x, 1)), (4,)),
    OpCase(torch.diff, fn(lambda x: torch.diff(x, dim=1)), (4,)),
    OpCase(torch.tril, fn(lambda x: torch.tril(x)), (3, 3)),
    OpCase(torch.triu, fn(lambda x: torch.triu(x, 1)), (3, 3)),
    OpCase(torch.index_select, lambda r: Fn(lambda x, i: torch.index_select(x, 1, i),
                                            torch.tensor([2, 0, 2])), (3,)),
    OpCase(torch.gather, lambda r: Fn(lambda x, i: torch.gather(
        x, 1, x.new_zeros(x.shape[0], 4, dtype=torch.long) + i), torch.tensor([2, 0, 2, 1])), (3,)),
    OpCase(torch.take_along_dim, lambda r: Fn(lambda x, i: torch.take_along_dim(
        x, x.new_zeros(x.shape[0], 3, dtype=torch.long) + i, 1), torch.tensor([1, 1, 0])), (3,)),
    OpCase(torch.masked_fill, lambda r: Fn(lambda x, m: torch.masked_fill(x, m, 0.5),
                                           torch.tensor([True, False, True])), (3,)),
    OpCase(torch.where, lambda r: Fn(lambda x, m: torch.where(m, x, -2 * x),
                                     torch.tensor([True, False, True])), (3,)),
    OpCase(torch.mm, lambda r: Fn(lambda x, w: torch.mm(x, w), r(4, 2)), (4,)),
    OpCase(torch.bmm, lambda r: Fn(lambda x, w: torch.bmm(x, x.new_zeros(x.shape[0], 1, 1) + w),
                                   r(1, 3, 2)), (2, 3)),
    OpCase("flip", fn(lambda x: x.flip(2)), (2, 3)),
    OpCase("fliplr", fn(lambda x: x.fliplr()), (2, 3)),
    OpCase("roll", fn(lambda x: x.roll(2, 1)), (4,)),
    OpCase("rot90", fn(lambda x: x.rot90(2, (1, 2))), (2, 3)),
    OpCase("select", fn(lambda x: x.select(-1, 0)), (3, 2)),
    OpCase("movedim", fn(lambda x: x.movedim(-1, 1)), (2, 3)),
    OpCase("moveaxis", fn(lambda x: x.moveaxis(1, -1)), (2, 3)),
    OpCase("swapaxes", fn(lambda x: x.swapaxes(1, 2)), (2, 3)),
    OpCase("swapdims", fn(lambda x: x.swapdims(1, 2)), (2, 3)),
    OpCase("tensor_split", fn(lambda x: x.tensor_split([1, 3], 1)[1]), (5,)),
    OpCase("unbind", fn(lambda x: x.unbind(2)[1]), (2, 3)),
    OpCase("tile", fn(lambda x: x.tile(1, 2, 1)), (2, 3)),
    OpCase("repeat_interleave", fn(lambda x: x.repeat_interleave(3, dim=1)), (2,)),
    OpCase("broadcast_to", fn(lambda x: x[:, None].broadcast_to(x.shape[0], 2, 3)), (3,)),
    OpCase("cumsum", fn(lambda x: x.cumsum(-1)), (2, 3)),
    OpCase("diff", fn(lambda x: x.diff(n=2, dim=1)), (5,)),
    OpCase("tril", fn(lambda x: x.tril(-1)), (3, 3)),
    OpCase("triu", fn(lambda x: x.triu()), (3, 3)),
    OpCase("index_select", lambda r: Fn(lambda x, i: x.index_select(1, i),
                                        torch.tensor([1, 1, 0])), (2,)),
    OpCase("gather", lambda r: Fn(lambda x, i: x.gather(1, x.new_zeros(
        x.shape[0], 3, dtype=torch.long) + i), torch.tensor([0, 0, 1])), (2,)),
    OpCase("take_along_dim", lambda r: Fn(lambda x, i: x.take_along_dim(
        x.new_zeros(x.shape[0], 2, dtype=torch.long) + i, 1), torch.tensor([2, 1])), (3,)),
    OpCase("masked_fill", lambda r: Fn(lambda x, m: x.masked_fill(m, -1.0),
                                       torch.tensor([False, True, True])), (3,)),
    OpCase("where", lambda r: Fn(lambda x, m: x.where(m, 3 * x),
                                 torch.tensor([False, True, True])), (3,)),
    OpCase("unfold", fn(lambda x: x.unfold(1, 2, 1)), (4,)),
    OpCase("type_as", fn(lambda x: x[:, :2].type_as(x) + x[:, 1:]), (3,)),
    OpCase("mm", lambda r: Fn(lambda x, w: x.mm(w), r(3, 2)), (3,)),
    OpCase("bmm", lambda r: Fn(lambda x, w: x.bmm(x.new_zeros(x.shape[0], 1, 1) + w),
                               r(1, 3, 2)), (2, 3)),
    # ---- piecewise-affine nonlinearities (inputs untied, every piece reached)
    OpCase(nn.ReLU, seq(nn.ReLU), (8,)),
    OpCase(F.relu, fn(lambda x: F.relu(x)), (8,)),
    OpCase(torch.relu, fn(lambda x: torch.relu(x)), (8,)),
    OpCase("relu", fn(lambda x: x.relu()), (8,)),
    OpCase("relu_", fn(lambda x: (x * 1.0).relu_()), (8,)),
    OpCase(F.relu_, fn(lambda x: F.relu_(x * 1.0)), (8,)),
    OpCase(nn.LeakyReLU, seq(lambda: nn.LeakyReLU(0.2)), (8,)),
    OpCase(F.leaky_relu, fn(lambda x: F.leaky_relu(x, -0.3)), (8,)),
    OpCase(nn.PReLU, prelu, (3, 4)),
    OpCase(F.prelu, lambda r: Fn(lambda x, w: F.prelu(x, w),
                                 torch.tensor([0.3, -1.0], dtype=DT)), (2, 3)),
    OpCase(torch.abs, fn(lambda x: torch.abs(x)), (8,)),
    OpCase(builtins.abs, fn(lambda x: abs(x)), (8,), traced_as=operator.abs),
    OpCase(operator.abs, fn(lambda x: operator.abs(x)), (8,)),
    OpCase("abs", fn(lambda x: x.abs()), (8,)),
    OpCase(man.Abs, lambda r: man.Abs(), (8,)),
    OpCase(nn.Hardtanh, seq(lambda: nn.Hardtanh(-0.5, 1.0)), (12,), scale=2.0),
    OpCase(nn.ReLU6, seq(nn.ReLU6), (12,), scale=8.0),
    OpCase(F.hardtanh, fn(lambda x: F.hardtanh(x, -0.3, 0.6)), (12,), scale=2.0),
    OpCase(F.relu6, fn(lambda x: F.relu6(x)), (12,), scale=8.0),
    OpCase(torch.clamp, fn(lambda x: torch.clamp(x, min=-0.5)), (12,), scale=2.0),
    OpCase("clamp", fn(lambda x: x.clamp(-0.5, 0.5)), (12,), scale=2.0),
    OpCase(torch.clip, fn(lambda x: torch.clip(x, max=0.4)), (12,), scale=2.0),
    OpCase("clip", fn(lambda x: x.clip(min=0.1)), (12,), scale=2.0),
    OpCase(nn.MaxPool1d, seq(lambda: nn.MaxPool1d(3, 2, 1, dilation=2)), (2, 9)),
    OpCase(F.max_pool1d, fn(lambda x: F.max_pool1d(x, 2, ceil_mode=True)), (2, 7)),
    OpCase(nn.MaxPool2d, seq(lambda: nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1),
                                                  dilation=(2, 1), ceil_mode=True)), (2, 5, 6)),
    OpCase(F.max_pool2d, fn(lambda x: F.max_pool2d(x, kernel_size=3, stride=2, padding=1)),
           (1, 6, 5)),
    OpCase(torch.maximum, fn(lambda x: torch.maximum(x[:, :4], x[:, 4:])), (8,)),
    OpCase(torch.max, fn(lambda x: torch.max(x[:, :4], -x[:, 4:])), (8,)),
    OpCase("maximum", fn(lambda x: x[:, :4].maximum(x[:, 4:])), (8,)),
    OpCase(torch.minimum, fn(lambda x: torch.minimum(x[:, :4], x[:, 4:])), (8,)),
    OpCase(torch.min, lambda r: Fn(lambda x, c: torch.min(x[:, :4], c), r(4)), (8,)),
    OpCase("minimum", fn(lambda x: x[:, :4].minimum(2 * x[:, 4:])), (8,)),
    # ---- nonlinearities added for issue 13
    # torch's hardsigmoid derivative is 1/6 rounded to float32 (ours: exact float64)
    OpCase(nn.Hardsigmoid, seq(nn.Hardsigmoid), (12,), scale=8.0, jac_tol=1e-7),
    OpCase(F.hardsigmoid, fn(lambda x: F.hardsigmoid(x)), (12,), scale=8.0, jac_tol=1e-7),
    OpCase(nn.Softshrink, seq(lambda: nn.Softshrink(0.5)), (12,), scale=2.0),
    OpCase(F.softshrink, fn(lambda x: F.softshrink(x, 0.3)), (12,), scale=2.0),
    OpCase(torch.clamp_min, fn(lambda x: torch.clamp_min(x, 0.2)), (8,)),
    OpCase("clamp_min", fn(lambda x: x.clamp_min(-0.2)), (8,)),
    OpCase(torch.clamp_max, fn(lambda x: torch.clamp_max(x, -0.1)), (8,)),
    OpCase("clamp_max", fn(lambda x: x.clamp_max(0.3)), (8,)),
    OpCase(nn.MaxPool3d, seq(lambda: nn.MaxPool3d(2, stride=1, padding=1)), (1, 3, 3, 3)),
    OpCase(F.max_pool3d, fn(lambda x: F.max_pool3d(x, (1, 2, 2), ceil_mode=True)),
           (2, 2, 3, 5)),
    OpCase(nn.AdaptiveMaxPool1d, seq(lambda: nn.AdaptiveMaxPool1d(3)), (2, 7)),
    OpCase(F.adaptive_max_pool1d, fn(lambda x: F.adaptive_max_pool1d(x, 4)), (2, 6)),
    OpCase(nn.AdaptiveMaxPool2d, seq(lambda: nn.AdaptiveMaxPool2d((2, 3))), (2, 5, 7)),
    OpCase(F.adaptive_max_pool2d, fn(lambda x: F.adaptive_max_pool2d(x, (3, None))), (1, 5, 4)),
    OpCase(nn.AdaptiveMaxPool3d, seq(lambda: nn.AdaptiveMaxPool3d((2, 1, 2))), (1, 3, 3, 5)),
    OpCase(F.adaptive_max_pool3d, fn(lambda x: F.adaptive_max_pool3d(x, 2)), (1, 3, 3, 3)),
    OpCase(torch.amax, fn(lambda x: torch.amax(x, (1, 2))), (2, 3, 4)),
    OpCase("amax", fn(lambda x: x.amax(-1, keepdim=True)), (3, 4)),
    OpCase("max", fn(lambda x: x[:, :4].max(x[:, 4:])), (8,)),
    OpCase("min", fn(lambda x: x[:, :4].min(2 * x[:, 4:])), (8,)),
    # max / min over a dim: rewritten at trace time to amax (min: -amax(-x))
    OpCase(torch.max, fn(lambda x: torch.max(x, 1).values), (3, 4), traced_as=torch.amax),
    OpCase("max", fn(lambda x: x.max(dim=2, keepdim=True)[0]), (3, 4), traced_as=torch.amax),
    OpCase(torch.min, fn(lambda x: torch.min(x, 2)[0]), (3, 4), traced_as=torch.amax),
    OpCase("min", fn(lambda x: x.min(1, True).values), (3, 4), traced_as=torch.amax),
    OpCase(torch.amin, fn(lambda x: torch.amin(x, (1, 2))), (2, 3, 2), traced_as=torch.amax),
    OpCase("amin", fn(lambda x: x.amin(1)), (3, 2), traced_as=torch.amax),
]


def case_id(case: OpCase) -> str:
    name = ops.describe_target(case.target)
    return name + ("(builtin)" if case.target is builtins.abs else "") + (
        "(maxaffine.nn)" if case.target is man.Abs else "")


def test_every_registered_op_is_in_the_table():
    covered = {id(c.target) for c in OPS}
    # (ops that other tests register for themselves, e.g. test_op_contract, excluded)
    missing = [ops.describe_target(t) for t in ops._REGISTRY if id(t) not in covered
               and not str(getattr(t, "__module__", "")).startswith("test_")]
    assert not missing, f"add an OpCase for {missing}"


def _bound_rule(graph: ma.SplineGraph, target: Any) -> ops.Rule:
    for step in graph._steps:
        if step.site is not None and step.site.target is target:
            return step.rule
    raise AssertionError(f"{target} not in the traced graph {[s.kind for s in graph._steps]}")


def _jacfwd(model: nn.Module, x: Tensor) -> Tensor:
    """Per-sample Jacobians of the original model, one jacfwd call per sample."""
    return torch.stack([torch.func.jacfwd(lambda v: model(v[None])[0].reshape(-1))(xi)
                        for xi in x])


@pytest.mark.parametrize("case", OPS, ids=case_id)
def test_op_rule_matches_jacfwd(case: OpCase):
    gen = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=DT)

    model = case.build(r).to(case.dtype).eval()
    if isinstance(case.target, type):
        model = nn.Sequential(model)  # the root module is traced through, never a leaf
    x = (r(5, *case.shape) * case.scale).to(case.dtype)
    graph = ma.trace(model, x)
    rule = _bound_rule(graph, case.traced_as or case.target)
    assert isinstance(rule, ops.lookup(case.traced_as or case.target))

    tol = 1e-12 if case.dtype == DT else 1e-5
    expected = model(x)
    torch.testing.assert_close(graph(x), expected, rtol=tol, atol=tol)
    amap = ma.affine_map(graph, x)
    jac = _jacfwd(model, x)
    jtol = case.jac_tol or tol
    torch.testing.assert_close(amap.A.reshape(jac.shape), jac.to(amap.A.dtype), rtol=jtol,
                               atol=jtol)
    torch.testing.assert_close(amap.reconstruct(), expected.reshape(5, -1), rtol=tol,
                               atol=tol)

    # Frozen at x's codes the graph is x's affine map, for any other input.
    found = graph.evaluate(x).codes
    x2 = (r(5, *case.shape) * case.scale).to(case.dtype)
    frozen = graph.evaluate(x2, codes=found).output.reshape(5, -1)
    torch.testing.assert_close(frozen, amap.reconstruct(x2), rtol=tol, atol=tol)

    if isinstance(rule, ops.Nonlinearity):
        (layer,) = graph.layers
        code = found[layer.name]
        assert code.shape == (5, *layer.code_shape)
        assert int(code.min()) >= 0 and int(code.max()) < layer.num_pieces
        if isinstance(rule, ops.Elementwise):  # every piece reached
            finite = [b for b in rule.breakpoints() if abs(b) < float("inf")]
            assert len(code.unique()) == len(finite) + 1


# ----------------------------------------------------------- random architectures


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_graph_reproduces_random_architectures(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 99)))
    graph = ma.trace(arch.model, x)
    torch.testing.assert_close(graph(x), arch.model(x), rtol=1e-12, atol=1e-12)
    ev = graph.evaluate(x, record=True)
    names = graph.layer_names
    assert len(set(names)) == len(names)
    assert list(ev.codes) == list(names) == list(ev.inputs)
    for index, layer in enumerate(graph.layers):
        assert ev.codes[layer.name].shape == (3, *layer.code_shape)
        assert layer.name in graph.table() == str(graph)
        assert graph.summary()["layers"][index]["name"] == layer.name
        assert graph.layer(layer.name) is layer
        assert graph.layer(index) is layer is graph.layer(index - len(names))
        assert layer.num_units == math.prod(layer.code_shape)
        assert layer.bits_per_unit >= math.log2(layer.num_pieces)
    assert graph.input_shape == arch.input_shape
    assert graph.num_outputs == arch.model(x).reshape(3, -1).shape[1]


def test_recorded_inputs_are_the_pre_activations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Hardtanh(),
                        nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=DT)
    ev = ma.trace(net, x).evaluate(x, record=True)
    z1 = net[0](x)
    z2 = net[2](net[1](z1))
    torch.testing.assert_close(ev.inputs["1"][0], z1)
    torch.testing.assert_close(ev.inputs["3"][0], z2)
    assert torch.equal(ev.codes["1"], (z1 > 0).to(torch.uint8))
    assert torch.equal(ev.codes["3"], ((z2 > -1).int() + (z2 > 1).int()).to(torch.uint8))


# ----------------------------------------------------------------------- names


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.lin(x))
        return self.act(F.relu(self.lin(h)) + x)  # self.act and self.lin called twice


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([Block(3), Block(3)])
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(torch.abs(x))


def test_layer_names_are_module_paths_unique_and_stable():
    x = torch.randn(4, 3, dtype=DT)
    net = Outer().double()
    graph = ma.trace(net, x)
    assert graph.layer_names == (
        "stages.0.act", "stages.0.relu", "stages.0.act@1",
        "stages.1.act", "stages.1.relu_1", "stages.1.act@1", "abs_1",
    )
    assert ma.trace(Outer().double(), x).layer_names == graph.layer_names
    # The two calls of a reused module keep separate codes: freezing them reproduces f.
    found = graph.evaluate(x).codes
    torch.testing.assert_close(graph.evaluate(x, codes=found).output, net(x))
    torch.testing.assert_close(ma.affine_map(graph, x).reconstruct(), net(x))


# -------------------------------------------------------------- plan-once contract


def test_trace_leaves_the_model_and_global_state_alone():
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(6, 3)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    attrs = {name: set(vars(m)) for name, m in net.named_modules()}
    rng = torch.get_rng_state()
    x = torch.randn(5, 4)
    torch.set_rng_state(rng)
    graph = ma.trace(net, x)
    ma.affine_map(graph, x)
    ma.codes(graph, x)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {name: set(vars(m)) for name, m in net.named_modules()} == attrs
    assert not any(m.training for m in net.modules())


def test_trace_writes_no_constants_onto_the_model():
    class Scale(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.relu(x * torch.tensor([1.0, -2.0], dtype=x.dtype))

    net = Scale()
    before = set(vars(net))
    x = torch.randn(3, 2, dtype=DT)
    graph = ma.trace(net, x)  # torch.fx stores the tensor as a constant on the root
    assert set(vars(net)) == before
    torch.testing.assert_close(graph(x), net(x))
    torch.testing.assert_close(ma.affine_map(graph, x).reconstruct(), net(x))


def test_graph_shares_the_models_parameters():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(7, 2, dtype=DT)
    graph = ma.trace(net, x)
    with torch.no_grad():
        net[0].weight.mul_(-2.0)
        net[2].bias.add_(1.0)
    torch.testing.assert_close(graph(x), net(x))
    assert ma.trace(graph, x) is graph


def test_register_op_refuses_duplicates_and_non_rules():
    with pytest.raises(ma.MaxAffineError, match="already registered") as info:
        ma.register_op(nn.ReLU, ops.ReLU)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work
    with pytest.raises(ma.MaxAffineTypeError, match=r"subclass of maxaffine\.ops\.Rule") as info:
        ma.register_op(object(), int)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    with pytest.raises(ma.MaxAffineTypeError, match="target must be"):
        ma.register_op(3, ops.ReLU)
    with pytest.raises(ma.MaxAffineTypeError, match="target must be"):
        ma.register_op(["relu"], ops.ReLU)  # type: ignore[arg-type]


class Twice(nn.Module):
    """A user activation: 2 * relu(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * F.relu(x)


class TwiceRule(ops.Elementwise):
    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return 2 * z * code.to(z.dtype)


def test_register_op_adds_a_leaf_rule():
    net = nn.Sequential(nn.Linear(3, 4), Twice(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=DT)
    assert [u.kind for u in ma.trace(net, x).layers] == ["ReLU"]  # traced through
    ma.register_op(Twice, TwiceRule)
    try:
        graph = ma.trace(net, x)
        assert [(u.name, u.kind) for u in graph.layers] == [("1", "TwiceRule")]
        torch.testing.assert_close(ma.affine_map(graph, x).reconstruct(), net(x))
        assert "Twice" in ma.supported_ops()["nonlinearity"]
    finally:
        ops._REGISTRY.pop(Twice)


def test_supported_ops_lists_both_families():
    listed = ma.supported_ops()
    assert {"Linear", "Conv2d", "BatchNorm2d", "torch.cat"} <= set(listed["affine"])
    assert {"ReLU", "MaxPool2d", "torch.maximum", "Hardtanh"} <= set(listed["nonlinearity"])


def test_layers_are_given_by_name_or_index_everywhere():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                        nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=DT)
    graph = ma.trace(net, x)
    assert graph.layer_names == ("1", "3") and graph.layer_index("3") == 1
    by_name = graph.run(x, until="1", record=True)
    by_index = graph.run(x, until=0, record=True)
    assert by_index.output is None and list(by_index.codes) == ["1"]
    assert torch.equal(by_index.inputs["1"][0], by_name.inputs["1"][0])
    assert torch.equal(graph.evaluate(x, until=-1).codes["3"],
                       graph.evaluate(x, until="3").codes["3"])
    assert graph.pause(-1) == graph.pause("3")
    resumed = graph.run(graph.run(x, stop=1, keep_codes=False).values, start=1)
    torch.testing.assert_close(resumed.output, net(x))
    between = graph.between(0, -1)
    assert (between.start, between.stop) == ("1", "3")
    torch.testing.assert_close(between(between.source(x))[0],
                               graph.run(x, until=1, record=True).inputs["3"][0])
