"""The peers: ONNX Runtime and OpenVINO running the ONNX file our export writes, on the same weights.

One file per model, ``resnet_fpn.deploy.export_model(ours, format="onnx", optimize=True, dynamic=True)`` (what
``resnet-fpn export --optimize --dynamic`` writes), loaded by each runtime installed here with the run's thread
count (``resnet_fpn.deploy.RuntimeSession``: OpenVINO's precision set explicitly, f32 or bf16, since its CPU
default is bf16 where the CPU has it). A runtime that is not installed is skipped with a note, never failed.
"""
from __future__ import annotations

import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from resnet_fpn.deploy import EXTERNAL_RUNTIMES, RuntimeSession, export_model, runtime_available

__all__ = ["Peer", "load_peers", "peer_outputs"]


class Peer:
    """One runtime's session on the shared ONNX file, called like our model.

    Attributes:
        name: e.g. "onnxruntime 1.32.0 fp32".
        session: the `RuntimeSession`.
        keys: the eager output keys, in the file's output order.
        kind: "backbone" or "detector".
    """

    def __init__(self, session: RuntimeSession, keys: Tuple[str, ...], kind: str) -> None:
        self.session = session
        self.keys = keys
        self.kind = kind
        self.name = session.describe()

    def __call__(self, x: Tensor) -> List[np.ndarray]:
        """Run on a backbone batch or one detector image (what is timed: the runtime call only)."""
        return self.session.run(x.numpy())


def peer_outputs(peer: Peer, x: Tensor) -> Dict[str, Tensor]:
    """`peer`'s outputs on `x` by eager key, as tensors (for the agreement columns)."""
    return OrderedDict((k, torch.from_numpy(v)) for k, v in zip(peer.keys, peer(x)))


def load_peers(model: nn.Module, *, bf16: bool = False) -> Tuple[List[Peer], List[str]]:
    """Export `model` once (BN folded, dynamic sizes) and load it into every installed external runtime.

    Args:
        model: our backbone or detector (not modified).
        bf16: load with bf16 inference precision (OpenVINO only; ONNX Runtime offers no bf16 CPU kernels and is
            skipped with a note).

    Returns:
        ``(peers, notes)``: the loaded peers, and one line per runtime skipped (with why).
    """
    notes: List[str] = []
    wanted = []
    for runtime in EXTERNAL_RUNTIMES:
        if not runtime_available(runtime):
            notes.append(f"{runtime}: not installed (pip install 'resnet_fpn[{'export' if runtime == 'onnxruntime' else runtime}]')")
        elif bf16 and runtime == "onnxruntime":
            notes.append("onnxruntime: no bf16 CPU kernels offered (bf16 row skipped)")
        else:
            wanted.append(runtime)
    if not wanted:
        return [], notes
    peers = []
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exported = export_model(model, Path(folder) / "model.onnx", format="onnx", optimize=True, dynamic=True)
        for runtime in wanted:
            peers.append(Peer(RuntimeSession(runtime, exported.path, bf16=bf16), exported.output_keys, exported.kind))
    return peers, notes
