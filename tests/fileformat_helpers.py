"""Test helpers: write a sealed ``.safetensors`` file from tensors in one call; copy a file of
the format-1 corpus.

zoo itself seals once (``seal``) and writes with ``write_tensors``; tests and benchmarks that
need a file of given tensors use this.
"""

from __future__ import annotations

import os
import shutil
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


#: Files written by zoo's format-1 writer (``tests/data/v1``), never rewritten.
V1_CORPUS = Path(__file__).parent / "data" / "v1"


def v1_copy(folder: Path, name: str = "full") -> Path:
    """A copy of the format-1 corpus file ``name`` in ``folder``, to change: the twin, on a
    format-1 file, of a test of a key format 2 no longer writes."""
    return Path(shutil.copy(V1_CORPUS / f"{name}.safetensors", folder / f"v1-{name}.safetensors"))
