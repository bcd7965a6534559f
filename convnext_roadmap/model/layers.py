"""Built-in norms, activations and block extras chosen by name, and the convs that feed them."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d


def make_norm(kind: str, channels: int) -> nn.Module:
    """A norm over the channels of an NCHW tensor. LayerNorm's eps follows ConvNeXt (1e-6)."""
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return LayerNorm2d(channels, eps=1e-6)
    return nn.Identity()


def make_act(kind: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "none": nn.Identity}[kind]()


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN (Woo et al., CVPR 2023, Algorithm 1) on NCHW: each channel's L2 norm over the map, divided
    by its mean over the channels, scales the input; gamma and beta start at zero, so GRN starts as the identity.
    Named `weight` and `bias`, as timm's GlobalResponseNorm names them."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.weight.view(1, -1, 1, 1) * (x * nx) + self.bias.view(1, -1, 1, 1) + x


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, norm_after: str = "none") -> nn.Conv2d:
    """A conv padded to keep the size (up to the stride); none when its patches do not overlap (kernel ≤ stride).
    A BatchNorm right after it makes a bias redundant. Depthwise and 1×1 convs are the subclasses below, which
    compute the same thing faster on the CPU."""
    padding = 0 if kernel <= stride else (kernel - 1) // 2
    kind = nn.Conv2d
    if groups == c_in == c_out > 1:
        kind = DepthwiseConv2d
    elif kernel == stride == groups == 1:
        kind = PointwiseConv2d
    return kind(c_in, c_out, kernel, stride, padding=padding, groups=groups, bias=norm_after != "batchnorm")


class PointwiseConv2d(nn.Conv2d):
    """nn.Conv2d with a 1×1 kernel, run on the CPU as the matrix product it is when the input is channels_last (as
    timm's ConvNeXt block runs its MLP) and the map at most 4×4: there torch's CPU 1×1 conv kernels take 1.2-2.2×
    longer to train (measured: 4×4 to 1×1, batch 64); at 8×8 the two are even, and from 28×28 the conv is faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = x.shape[-2] * x.shape[-1] <= 16
        if x.device.type != "cpu" or not small or not x.is_contiguous(memory_format=torch.channels_last) \
                or torch.jit.is_tracing():
            return super().forward(x)
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d with groups = channels, computed another way on the CPU when the map is smaller than the kernel
    (the CPU proxy's last stages), where torch's own depthwise kernels take 10-100× longer than the same FLOPs
    elsewhere (7×7 at 4×4 and 1×1, 3×3 at 2×2 and 1×1, stride 2 at 2×2). The same parameters and the same math:
    only the taps that can reach the map are computed (the others only ever multiply padding), and their backward
    is a conv with the flipped kernel for the input and a sum of shifted products for the weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the other way knows what conv() builds: zero padding given in pixels, no dilation
        self.small_maps_ok = (self.dilation == (1, 1) and self.padding_mode == "zeros"
                              and not isinstance(self.padding, str))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (k_h, k_w) = x.shape[-2:], self.kernel_size
        if x.device.type != "cpu" or (h >= k_h and w >= k_w) or not self.small_maps_ok or torch.jit.is_tracing():
            return super().forward(x)
        (rows, taps_h), (cols, taps_w) = (_reach(*a) for a in zip((h, w), self.kernel_size, self.padding, self.stride))
        padded = F.pad(x, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        seen = padded[:, :, rows, cols].contiguous(memory_format=_layout(x))
        return _ValidDepthwise.apply(seen, self.weight[:, :, taps_h, taps_w], self.bias, self.stride)


def _reach(n: int, k: int, pad: int, stride: int) -> tuple[slice, slice]:
    """Along one side of a map of n pixels padded by `pad`: the padded pixels and the kernel's taps that make the
    outputs, leaving out the taps that only ever meet padding."""
    last = (n + 2 * pad - k) // stride * stride  # where the last output's window starts
    first_tap, last_tap = max(0, pad - last), min(k - 1, pad + n - 1)
    return slice(first_tap, last + last_tap + 1), slice(first_tap, last_tap + 1)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format to keep: channels_last where x is laid out NHWC (and not also NCHW), else NCHW."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


class _ValidDepthwise(torch.autograd.Function):
    """An unpadded depthwise conv whose backward avoids torch's depthwise backward kernels. Under bf16 autocast
    the backward runs under it too (custom_bwd), as the forward's conv did."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, bias, stride):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride, groups=len(weight))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (s_h, s_w), (k_h, k_w), (o_h, o_w) = ctx.stride, weight.shape[2:], grad.shape[2:]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # the transposed conv: the gradient spread out by the stride, full correlation
            spread = grad.new_zeros(*grad.shape[:2], (o_h - 1) * s_h + 1, (o_w - 1) * s_w + 1)
            spread[:, :, ::s_h, ::s_w] = grad
            spread = F.pad(spread, (k_w - 1, k_w - 1, k_h - 1, k_h - 1)).contiguous(memory_format=_layout(x))
            gx = F.conv2d(spread, weight.flip(2, 3), groups=len(weight))
        if ctx.needs_input_grad[1]:
            span_h, span_w = (o_h - 1) * s_h + 1, (o_w - 1) * s_w + 1
            gw = torch.stack([(x[:, :, i:i + span_h:s_h, j:j + span_w:s_w] * grad).sum((0, 2, 3))
                              for i in range(k_h) for j in range(k_w)], dim=1).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None
