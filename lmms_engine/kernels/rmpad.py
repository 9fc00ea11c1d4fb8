"""Remove padding: a padded micro-batch becomes one padding-free stream delimited by cu_seqlens."""

from __future__ import annotations

import torch


def unpad_batch(batch: dict) -> dict:
    """(B, L) input_ids/labels/position_ids + attention_mask -> (1, T) stream with cu_seqlens."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
    packed = {key: batch[key][mask].unsqueeze(0) for key in ("input_ids", "labels", "position_ids")}
    packed.update(
        cu_seqlens=cu_seqlens,
        max_seqlen=int(lengths.max()),
        num_label_tokens=batch["num_label_tokens"],
        sample_ids=batch["sample_ids"],
    )
    return packed


def document_lengths(batch: dict) -> list[int]:
    """Real (unpadded) token count of each document in a batch, packed or padded."""
    if "cu_seqlens" in batch:
        return torch.diff(batch["cu_seqlens"]).tolist()
    return batch["attention_mask"].sum(dim=1).tolist()
