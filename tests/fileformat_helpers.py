"""Test helper: write a sealed ``.safetensors`` file from tensors in one call.

zoo itself seals once (``seal``) and writes with ``write_tensors``; tests and benchmarks that
need a file of given tensors use this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from zoo.io.fileformat import seal, write_tensors


def write_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` and ``metadata`` as a sealed ``.safetensors`` file, atomically.

    Adds ``zoo.tensors_sha256`` and ``zoo.content_sha256``; the result reads back with
    ``zoo.io.fileformat.read_file`` (verified) and with ``safetensors.torch.load_file`` alike.
    """
    return write_tensors(path, tensors, seal(tensors, metadata or {}))
