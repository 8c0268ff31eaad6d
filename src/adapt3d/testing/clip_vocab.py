"""CLIP's real BPE vocabulary (49,408 tokens) as a transformers ``CLIPTokenizer``, without a download.

The vocabulary ships only inside the open-clip-torch package (``open_clip/bpe_simple_vocab_16e6.txt.gz``, MIT
licence); importing ``open_clip`` needs torchvision, so it is read as a file. :func:`find_clip_bpe` looks, in order,
at ``$ADAPT3D_CLIP_BPE`` (the ``.txt.gz`` itself, or an ``open_clip_torch-*.whl`` to read it from) and at an
installed ``open_clip`` package (located with ``importlib``, never imported). The conversion gives the same ids as
open_clip's tokenizer (``shared/docs/dependencies.md`` §3): 256 byte characters, their 256 ``</w>`` variants,
48,894 merges, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zipfile
from pathlib import Path

from adapt3d.diffusion.tiny_models import _bytes_to_unicode

__all__ = ["CLIP_VOCAB_SIZE", "find_clip_bpe", "clip_bpe_tokenizer"]

CLIP_VOCAB_SIZE = 49408
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
ENV = "ADAPT3D_CLIP_BPE"


def find_clip_bpe() -> Path | None:
    """The CLIP BPE file (or an open-clip-torch wheel holding it), or None when there is none here."""
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${ENV}={env}: no such file (expected {BPE_NAME} or an open_clip_torch .whl)")
        return path
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / BPE_NAME
        if path.is_file():
            return path
    return None


def _read_bpe(path: Path) -> list[str]:
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/" + BPE_NAME)]
            if not names:
                raise ValueError(f"{path}: holds no {BPE_NAME}")
            data = gzip.decompress(z.read(names[0]))
    else:
        data = gzip.open(path).read()
    return data.decode("utf-8").split("\n")


def clip_bpe_tokenizer(path: str | os.PathLike, model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer`` with CLIP's real vocabulary read from ``path`` (see the module docstring)."""
    from transformers import CLIPTokenizer

    lines = _read_bpe(Path(path))
    merges = [tuple(m.split()) for m in lines[1:CLIP_VOCAB_SIZE - 256 * 2 - 2 + 1]]
    chars = sorted(_bytes_to_unicode().values())  # CLIP's order: printable bytes first, then the remapped ones
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{path}: gives {len(tokens)} tokens, expected CLIP's {CLIP_VOCAB_SIZE}")
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
