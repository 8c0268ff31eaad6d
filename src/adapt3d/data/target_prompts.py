"""Per-target prompts for PODIA-3D-style target generation: text-guided debiasing of instances.

PODIA-3D observes an *instance bias*: for one target prompt, a text-to-image model draws nearly the same person
(gender, age, ...) whatever the source, so the adapted generator loses the source domain's diversity. Its remedy is
text: describe the source instance's attributes in the prompt. Here each attribute group (``--debias-attributes
'man|woman' 'young|old'``) is decided per *source render* by CLIP zero-shot classification (the option whose text
``template.format(option)``, default ``"a photo of a {}"``, has the highest cosine with the render), and the chosen
words are put into the prompt: at ``{attributes}`` when the prompt has that placeholder, otherwise appended as
``"<prompt>, <word> <word>"``. Choices made here (the paper leaves them open or decides them differently): CLIP as
the attribute classifier, the groups given by the user, argmax rather than sampling.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["parse_attribute_groups", "AttributeDebiaser", "with_attributes", "ATTRIBUTES_PLACEHOLDER"]

ATTRIBUTES_PLACEHOLDER = "{attributes}"


def parse_attribute_groups(groups: Sequence[str], flag: str = "--debias-attributes") -> list[list[str]]:
    """'man|woman' -> ['man', 'woman'] per group; each group needs >= 2 distinct non-empty options."""
    out = []
    for g in groups:
        options = [o.strip() for o in str(g).split("|")]
        if len(options) < 2 or any(not o for o in options) or len(set(options)) != len(options):
            raise ValueError(f"{flag}: {g!r} must list two or more distinct options separated by '|', e.g. "
                             "'man|woman'")
        out.append(options)
    return out


def with_attributes(prompt: str, words: Sequence[str]) -> str:
    """Put ``words`` into ``prompt`` at ``{attributes}`` or append them after a comma (no words: unchanged)."""
    text = " ".join(words)
    if ATTRIBUTES_PLACEHOLDER in prompt:
        return " ".join(prompt.replace(ATTRIBUTES_PLACEHOLDER, text).split())
    return f"{prompt}, {text}" if text else prompt


class AttributeDebiaser:
    """Classify source renders into attribute options with a CLIP scorer and write them into prompts."""

    def __init__(self, scorer, groups: Sequence[Sequence[str]], template: str = "a photo of a {}") -> None:
        if template.count("{}") != 1:
            raise ValueError(f"--debias-template: {template!r} must contain exactly one '{{}}'")
        self.scorer, self.groups, self.template = scorer, [list(g) for g in groups], template

    @torch.no_grad()
    def attributes(self, images: torch.Tensor) -> list[list[str]]:
        """Renders (B, 3, H, W) in [-1, 1] -> the chosen option of every group, per image."""
        img = self.scorer.encode_images(images)  # (B, D)
        chosen: list[list[str]] = [[] for _ in range(images.shape[0])]
        for options in self.groups:
            text = self.scorer.encode_text([self.template.format(o) for o in options])  # (K, D)
            best = (img @ text.T).argmax(dim=1)  # (B,)
            for k, j in enumerate(best.tolist()):
                chosen[k].append(options[j])
        return chosen
