"""A minimal PyTorch DiT with jaxdiff's ``DiT`` architecture, for ``experiments.benchmark``.

Follows facebookresearch/DiT ``models.py`` (Peebles & Xie 2023, fig. 3: adaLN-Zero blocks)
as ``jaxdiff.models.dit.DiT`` does: patch-embedding conv, fixed 2-D sin-cos positions (a
buffer, not a parameter), t-MLP on 256 sinusoidal features, a label table of
``num_classes + 1`` rows, ``depth`` blocks, an adaLN final layer, no ``learn_sigma`` half.
Attention is ``F.scaled_dot_product_attention`` (what timm's ``Attention`` calls). Only the
speed is compared; the initialisation is PyTorch's default. Needs torch (not a jaxdiff
dependency): ``pip install -r requirements-bench.txt``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from jaxdiff.models.dit import sincos_pos_embed_2d


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TorchDiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.fc2 = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        mod = self.adaLN_modulation(F.silu(c)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        qkv = self.qkv(_modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate_msa.unsqueeze(1) * self.proj(attn)
        h = self.fc2(F.gelu(self.fc1(_modulate(self.norm2(x), shift_mlp, scale_mlp)),
                            approximate="tanh"))
        return x + gate_mlp.unsqueeze(1) * h


class TorchDiT(nn.Module):
    """(B, C, H, W) images, (B,) int t, (B,) int labels -> (B, C, H, W)."""

    def __init__(self, *, input_size: int, in_channels: int, patch_size: int, hidden_size: int,
                 depth: int, num_heads: int, num_classes: int, mlp_ratio: float = 4.0,
                 frequency_embedding_size: int = 256):
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.frequency_embedding_size = frequency_embedding_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        grid = input_size // patch_size
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_pos_embed_2d(hidden_size, grid, grid)).unsqueeze(0))
        self.t_mlp_0 = nn.Linear(frequency_embedding_size, hidden_size)
        self.t_mlp_1 = nn.Linear(hidden_size, hidden_size)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList(
            [TorchDiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_adaLN_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.final_linear = nn.Linear(hidden_size, patch_size * patch_size * in_channels)

    def timestep_features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        steps = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(10000) * steps / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        p, c_out = self.patch_size, self.in_channels
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_mlp_1(F.silu(self.t_mlp_0(self.timestep_features(t)))) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_adaLN_modulation(F.silu(c)).chunk(2, dim=1)
        x = self.final_linear(_modulate(self.final_norm(x), shift, scale))
        h, w = height // p, width // p
        x = x.view(b, h, w, p, p, c_out).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c_out, height, width)
