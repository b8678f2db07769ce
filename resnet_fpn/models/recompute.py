"""Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") for blocks that
hold BatchNorm: activations are recomputed in backward instead of stored, and BN's running statistics are
updated once per step, not twice.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["needs_checkpoint", "run_checkpointed"]


def needs_checkpoint(module: nn.Module, *inputs: Any) -> bool:
    """Whether checkpointing `module` on `inputs` saves anything: training, grad enabled, and a graph to keep
    (an input or a parameter that requires grad). Stages frozen by ``freeze_at`` under an image that needs no
    grad build no graph, so they run plainly."""
    if not (module.training and torch.is_grad_enabled()):
        return False
    if any(isinstance(x, torch.Tensor) and x.requires_grad for x in _tensors(inputs)):
        return True
    return any(p.requires_grad for p in module.parameters())


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            yield from _tensors(value.values())
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """The running statistics of `module`'s BN layers in training mode, as they were before, restored after.

    The recomputation must save the same tensors as the forward (the checkpoint checks it), so BN runs the
    same way (updating its buffers) and the buffers are put back: one update per step, as without
    checkpointing. The copies are per-channel vectors, a few KiB per block.
    """
    kept: List[Tuple[nn.Module, List[torch.Tensor]]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            buffers = [m.running_mean, m.running_var, m.num_batches_tracked]
            kept.append((m, [b.clone() for b in buffers]))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, saved in kept:
                for buffer, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), saved):
                    buffer.copy_(value)


def run_checkpointed(module: Callable[..., Any], *inputs: Any) -> Any:
    """``module(*inputs)`` under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``.

    The non-reentrant variant (torch's recommended one) supports inputs that need no grad (frozen stages
    before it), keyword-free dict inputs and outputs (the FPN's), and re-enters the forward's autocast state
    (bf16 autocast works). The recomputation in backward runs the module a second time: BatchNorm in training
    mode would then update its running statistics twice per step (momentum applied twice), so they are put
    back as they were after the recomputation (same batch statistics, same outputs and gradients, one update).

    Args:
        module: an ``nn.Module`` (or any callable whose BN layers are reachable as ``.modules()``).
        inputs: its positional inputs.

    Returns:
        What `module` returns.

    Example:
        >>> block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
        >>> run_checkpointed(block, torch.rand(2, 3, 8, 8, requires_grad=True)).sum().backward()
    """
    calls = [0]

    def forward(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1 or not isinstance(module, nn.Module):
            return module(*args)
        with _running_stats_kept(module):
            return module(*args)

    return checkpoint(forward, *inputs, use_reentrant=False)
