"""FLOPs of Qwen3-VL's vision tower (with its DeepStack mergers), per image / video grid, for MFU.

A grid (t, h, w) is the processor's patch grid: N = t*h*w patches of `temporal_patch_size x
patch_size x patch_size` pixels, merged m x m (m = spatial_merge_size) into N / m^2 tokens. Counted
like models/flops.py (2 FLOPs per multiply-add of a matmul; norms, activations, rotary, the learned
position-embedding interpolation and softmax are left out), forward pass:

  patch embed  2 * N * (C * tp * p^2) * D          a Conv3d whose stride equals its kernel: a matmul
  per block    2 * N * (4 D^2 + 2 D I)             qkv (3 D^2) + proj (D^2) + MLP fc1, fc2 (2 D I, not gated)
               + 4 * D * t * (h*w)^2               Q @ K^T and P @ V, non-causal, within each frame
  mergers      (1 + k) * 2 * (N / m^2) * (Dm^2 * Dm^2 + Dm^2 * out)   Dm^2 = D * m^2; the final merger
                                                   and the k DeepStack mergers (deepstack_visual_indexes)

Every block attends over a whole temporal slice (no windows, unlike Qwen2.5-VL). Training: a trained
tower costs 3x its forward, a frozen one its forward only.
"""

from __future__ import annotations

from collections.abc import Iterable


def qwen3_vision_forward_flops(config, grid_thw) -> float:
    """Forward FLOPs of the Qwen3-VL vision tower on one image or video grid (t, h, w) in patches."""
    t, h, w = (int(v) for v in grid_thw)
    merge = config.spatial_merge_size
    if min(t, h, w) <= 0 or h % merge or w % merge:
        raise ValueError(f"grid {(t, h, w)} must be positive with h and w divisible by spatial_merge_size={merge}")
    d, inter = config.hidden_size, config.intermediate_size
    patches = t * h * w
    patch_embed = 2.0 * patches * config.in_channels * config.temporal_patch_size * config.patch_size**2 * d
    blocks = config.depth * (2.0 * patches * (4 * d * d + 2 * d * inter) + 4.0 * d * t * (h * w) ** 2)
    merged_dim = d * merge**2
    mergers = 1 + len(config.deepstack_visual_indexes)
    merger = mergers * 2.0 * (patches // merge**2) * (merged_dim * merged_dim + merged_dim * config.out_hidden_size)
    return patch_embed + blocks + merger


def qwen3_vision_train_flops(config, grids: Iterable, trainable: bool = True) -> float:
    """One step's vision FLOPs over the given grids: 3x forward if the tower trains, else 1x."""
    forward = sum(qwen3_vision_forward_flops(config, grid) for grid in grids)
    return 3.0 * forward if trainable else forward
