"""Causal convolutions along time that stream exactly: one call on a whole signal equals the same
signal fed in pieces inside ``with module.streaming(batch):`` (omni/streaming.py). Shared by the
speech codec (1-D) and the video tokenizer (3-D, time first)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor


class ConvState(StreamingState):
    """The trailing inputs of the previous call, ``[B, C, pad, ...]`` (time is dim 2)."""

    def __init__(self, previous: Tensor) -> None:
        self.previous = previous
        self.initial_len = previous.shape[2]

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None:
            self.previous = self.previous.new_zeros(*self.previous.shape[:2], self.initial_len, *self.previous.shape[3:])
            return
        if self.previous.shape[2] != self.initial_len:
            raise RuntimeError(
                "cannot reset some streams while others are mid-way through a stride; "
                "reset all streams (mask=None) or feed whole strides"
            )
        self.previous[mask.to(self.previous.device)] = 0


def pointwise_conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A 1x1 ``conv`` of ``x`` [B, C, T] whose every output frame is the same arithmetic whatever T.

    oneDNN's 1x1 path rounds differently with the number of frames (1e-7 relative), which would
    break streaming exactness; run as a 2-tap conv with a zero first tap (same weights, exact zeros
    added), the result does not depend on T (measured for 1 to 200 frames).
    """
    return F.conv1d(F.pad(x, (1, 0)), F.pad(conv.weight, (1, 0)), conv.bias)


class CausalConv(StreamingModule):
    """Causal convolution along dim 2 (time) of ``[B, C, T]`` (1-D) or ``[B, C, T, H, W]`` (3-D).

    Pads ``pad`` zeros on the left of time (default ``(kernel-1)*dilation + 1 - stride`` so that T
    inputs give T/stride outputs, output t seeing inputs up to (t+1)*stride-1) and ``spatial//2``
    on both sides of the spatial dims. Offline, T must be a multiple of ``stride`` (after ``pad``
    is accounted for). Streaming calls continue from the stored trailing inputs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        spatial: int = 0,
        pad: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.span = (kernel - 1) * dilation + 1  # inputs one output sees
        self.pad = self.span - stride if pad is None else pad
        if self.pad < 0:
            raise ValueError(f"CausalConv: kernel span {self.span} < stride {stride}")
        if spatial:
            self.conv: nn.Module = nn.Conv3d(
                in_channels, out_channels, (kernel, spatial, spatial), (stride, 1, 1),
                padding=(0, spatial // 2, spatial // 2), dilation=(dilation, 1, 1),
            )
        else:
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, dilation=dilation)
        self.pointwise = not spatial and kernel == 1 and stride == 1

    def _init_streaming_state(self, batch_size: int, **options: Any) -> ConvState:
        w = self.conv.weight
        return ConvState(w.new_zeros(batch_size, w.shape[1], self.pad))

    def forward(self, x: Tensor) -> Tensor:
        state = self._streaming_state
        if state is None:
            if (x.shape[2] + self.pad - self.span) % self.stride:
                raise ValueError(f"CausalConv: {x.shape[2]} time steps do not fill whole strides of {self.stride}")
            return self._conv(F.pad(x, (0, 0) * (x.dim() - 3) + (self.pad, 0)))
        if state.previous.shape[3:] != x.shape[3:]:  # 3-D: spatial size known only at the first call
            state.previous = x.new_zeros(*x.shape[:2], state.previous.shape[2], *x.shape[3:])
        buf = torch.cat([state.previous, x], dim=2)
        n = (buf.shape[2] - self.span) // self.stride + 1 if buf.shape[2] >= self.span else 0
        state.previous = buf[:, :, n * self.stride:]
        if n == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0, *x.shape[3:])
        return self._conv(buf[:, :, : (n - 1) * self.stride + self.span])

    def _conv(self, x: Tensor) -> Tensor:
        return pointwise_conv(self.conv, x) if self.pointwise else self.conv(x)


class CausalUpsample(nn.Module):
    """Sub-pixel upsampling in time: causal conv to ``out*stride`` channels, then fold into time.

    ``[B, C, T, ...] -> [B, out, T*stride, ...]``; output frame ``t*stride + j`` reads conv channel
    ``c*stride + j`` at step t, so it sees only inputs <= t.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int = 3, spatial: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels
        self.conv = CausalConv(in_channels, out_channels * stride, kernel, spatial=spatial)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # [B, out*s, T, ...]
        b, _, t, *rest = y.shape
        y = y.reshape(b, self.out_channels, self.stride, t, *rest).transpose(2, 3)
        return y.reshape(b, self.out_channels, t * self.stride, *rest)
