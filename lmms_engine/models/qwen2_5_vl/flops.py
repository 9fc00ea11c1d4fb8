"""FLOPs of Qwen2.5-VL's vision tower, per image / video grid, for MFU.

A grid (t, h, w) is the patch grid the processor returns (`image_grid_thw` rows): N = t*h*w patches
of `temporal_patch_size x patch_size x patch_size` pixels, merged m x m (m = spatial_merge_size)
into N / m^2 tokens for the decoder. Counted like models/flops.py (2 FLOPs per multiply-add of a
matmul; norms, activations, rotary and softmax are left out), forward pass:

  patch embed  2 * N * (C * tp * p^2) * D          a Conv3d whose stride equals its kernel: a matmul
  per block    2 * N * (4 D^2 + 3 D I)             qkv (3 D^2) + proj (D^2) + gated MLP (3 D I)
               + 4 * D * sum(n^2)                  Q @ K^T and P @ V, non-causal, per attention span
  merger       2 * (N / m^2) * (Dm^2 * Dm^2 + Dm^2 * out)    with Dm^2 = D * m^2

Attention spans: a full-attention block (`fullatt_block_indexes`) attends within each temporal
slice of a grid (t spans of h*w patches). Any other block attends within windows of
W = window_size / m / p merged tokens a side, tiled over each slice's (h/m) x (w/m) merged grid
(edge windows smaller), so with row chunks r_i and column chunks c_j of that tiling:
  sum(n^2) = t * m^4 * sum_i(r_i^2) * sum_j(c_j^2).

Training: backward costs twice the forward, so a trained tower costs 3x its forward; a frozen tower
(no parameter needs a gradient, and pixels never do) costs its forward only.
"""

from __future__ import annotations

from collections.abc import Iterable


def vision_forward_flops(vision_config, grid_thw) -> float:
    """Forward FLOPs of the vision tower on one image or video grid (t, h, w) in patches."""
    t, h, w = (int(v) for v in grid_thw)
    _check_grid(vision_config, t, h, w)
    patches = t * h * w
    blocks = vision_config.depth
    full_blocks = len([i for i in vision_config.fullatt_block_indexes if i < blocks])
    squares = full_blocks * _full_attention_squares(t, h, w)
    squares += (blocks - full_blocks) * _window_attention_squares(vision_config, t, h, w)
    attention = 4.0 * vision_config.hidden_size * squares
    return (
        2.0 * patches * _patch_embed_params(vision_config)
        + 2.0 * patches * blocks * _block_params(vision_config)
        + attention
        + 2.0 * _merger_tokens(vision_config, patches) * _merger_params(vision_config)
    )


def vision_train_flops(vision_config, grids: Iterable, trainable: bool = True) -> float:
    """FLOPs of one step's vision work over the given grids: 3x forward if the tower is trained,
    1x if it is frozen."""
    forward = sum(vision_forward_flops(vision_config, grid) for grid in grids)
    return 3.0 * forward if trainable else forward


def _patch_embed_params(config) -> int:
    return config.in_channels * config.temporal_patch_size * config.patch_size**2 * config.hidden_size


def _block_params(config) -> int:
    d, inter = config.hidden_size, config.intermediate_size
    return 4 * d * d + 3 * d * inter


def _merger_params(config) -> int:
    merged_dim = config.hidden_size * config.spatial_merge_size**2
    return merged_dim * merged_dim + merged_dim * config.out_hidden_size


def _merger_tokens(config, patches: int) -> int:
    return patches // config.spatial_merge_size**2


def _full_attention_squares(t: int, h: int, w: int) -> int:
    # one span per temporal slice (transformers' vision cu_seqlens repeat h*w, t times)
    return t * (h * w) ** 2


def _window_attention_squares(config, t: int, h: int, w: int) -> int:
    merge = config.spatial_merge_size
    side = config.window_size // merge // config.patch_size  # window side, in merged tokens
    rows = _chunk_squares(h // merge, side)
    cols = _chunk_squares(w // merge, side)
    return t * merge**4 * rows * cols


def _chunk_squares(length: int, side: int) -> int:
    """Sum of squared chunk lengths when `length` is cut into chunks of `side` (last one shorter)."""
    full, rest = divmod(length, side)
    return full * side * side + rest * rest


def _check_grid(config, t: int, h: int, w: int) -> None:
    merge = config.spatial_merge_size
    if min(t, h, w) <= 0 or h % merge or w % merge:
        raise ValueError(f"grid {(t, h, w)} must be positive with h and w divisible by spatial_merge_size={merge}")
    if config.window_size // merge // config.patch_size < 1:
        raise ValueError(
            f"window_size={config.window_size} is smaller than one merged token "
            f"({merge} x patch_size {config.patch_size} pixels)"
        )
