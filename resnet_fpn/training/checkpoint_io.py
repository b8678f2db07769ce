"""How a training run writes its checkpoints: atomically, beside the target, through Lightning's CheckpointIO.

Lightning's ``TorchCheckpointIO`` writes a local checkpoint through an fsspec transaction, whose temporary file
is created in the system temporary folder (``tempfile.mkstemp()`` with no folder) and moved over the target on
commit. A run killed mid-write leaves that file behind in /tmp (one per kill, the size of a checkpoint: 180 MB
for a Faster R-CNN R50-FPN with its optimizer state), and where /tmp is another file system (a tmpfs) the move is
a copy, which a kill can tear. Writing through `resnet_fpn.files.atomic_path` instead keeps the temporary file in
the checkpoint folder, so the rename is atomic and what a kill leaves is found, and removed, on resume.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from ..files import atomic_torch_save

__all__ = ["AtomicCheckpointIO", "remove_partial_checkpoints"]

log = logging.getLogger(__name__)

# `atomic_path` names its temporary file ".<target name>.<random>.tmp"
PARTIAL_PATTERN = ".*.ckpt.*.tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with local files written to a temporary file in the same folder and renamed.

    Remote paths (``s3://``, ``gs://``, ...) keep Lightning's own transaction; loading and removing are
    Lightning's. Given to the Trainer as ``plugins=[AtomicCheckpointIO()]``.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Union[str, Path],
                        storage_options: Optional[Any] = None) -> None:
        """Write `checkpoint` to `path`: a killed write leaves `path` as it was (see `resnet_fpn.files`).

        Raises:
            TypeError: ``storage_options`` given (as Lightning's TorchCheckpointIO).
        """
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


def _is_local(path: Union[str, Path]) -> bool:
    protocol = get_filesystem(path).protocol
    return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))


def remove_partial_checkpoints(folder: Union[str, Path]) -> List[Path]:
    """Remove the temporary checkpoint files a killed run left in `folder`; return what was removed.

    Only names `AtomicCheckpointIO` writes (``.<name>.ckpt.<random>.tmp``) are touched. Call it where no other
    process writes to `folder` (a resumed run's rank zero, before its Trainer starts).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted(p for p in folder.glob(PARTIAL_PATTERN) if p.is_file())
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.warning("removed %d partial checkpoint file(s) a killed run left in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed
