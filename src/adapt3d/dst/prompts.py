"""Text prompts for 3D-DST: templates from class names, synonyms and mesh keyword tags, optionally rewritten by a
local text-generation model (any transformers causal LM by id or path), cached per class.

3D-DST's released code has one template, ``"An image of {class}, best quality, extremely detailed"`` plus a fixed
negative prompt (both below); its paper combines class names with CAD keyword tags and lets an LLM enrich them (the
LLM instruction was never published, so ours is a plain completion prompt, configurable).

Choice per image: ``prompt_for(class, tags, key)`` picks one candidate with ``random.Random(key)``, so the same
image always gets the same prompt. LLM candidates are generated once per class and stored in a JSON cache
(``prompts.json`` of the run): reruns and other shards reuse them instead of sampling again.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from adapt3d.utils.io import atomic_write_json

__all__ = ["DST_SUFFIX", "DST_NEGATIVE", "CLASS_SYNONYMS", "DEFAULT_TEMPLATES", "PromptConfig", "PromptBuilder",
           "LLMPromptRewriter", "clean_generated_text"]

DST_SUFFIX = "best quality, extremely detailed"
DST_NEGATIVE = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
                "worst quality, low quality")
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane", "aeroplane", "airliner", "jet plane"),
    "bicycle": ("bicycle", "bike", "mountain bike", "road bike"),
    "boat": ("boat", "ship", "sailboat", "motorboat"),
    "bottle": ("bottle", "glass bottle", "water bottle"),
    "bus": ("bus", "city bus", "school bus", "coach"),
    "car": ("car", "sedan", "automobile", "hatchback", "sports car"),
    "chair": ("chair", "armchair", "dining chair", "office chair"),
    "diningtable": ("dining table", "kitchen table", "table"),
    "table": ("table", "desk", "dining table"),
    "motorbike": ("motorbike", "motorcycle", "scooter"),
    "sofa": ("sofa", "couch", "settee"),
    "train": ("train", "locomotive", "passenger train"),
    "tvmonitor": ("tv monitor", "television", "computer monitor"),
    "bench": ("bench", "park bench"),
    "bed": ("bed", "double bed"),
    "lamp": ("lamp", "table lamp", "floor lamp"),
    "laptop": ("laptop", "notebook computer"),
    "airliner": ("airliner", "passenger jet"),
    "keyboard": ("keyboard", "computer keyboard"),
    "microwave": ("microwave", "microwave oven"),
}
DEFAULT_TEMPLATES = (
    "An image of {name}",
    "a photo of a {tags}{name}",
    "a realistic photo of a {tags}{name}",
    "a close-up photo of a {tags}{name}",
    "a high-resolution photo of a {tags}{name}",
    "a {tags}{name} in a natural scene",
)
_UNPRINTABLE = re.compile(r"[^\x20-\x7E]+")


@dataclass
class PromptConfig:
    """How prompts are made."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Templates with {name} (a class name or synonym) and {tags} (a mesh tag plus a space, or nothing)."""
    synonyms: bool = True
    """Draw {name} from the class's synonyms (built-in table; unknown classes use their own name)."""
    tags: bool = True
    """Fill {tags} with one of the mesh's keyword tags (when it has any)."""
    suffix: str = DST_SUFFIX
    """Appended after a comma (3D-DST's 'a_prompt'); empty for none."""
    negative_prompt: str = DST_NEGATIVE
    llm: str | None = None
    """Rewrite prompts with this local causal LM (hub id or folder; None = templates only)."""
    llm_variants: int = 8
    """Prompts generated per class by the LLM."""
    llm_instruction: str = "A detailed description of a photo of a {name}:"
    """Text the LLM continues, with {name}."""
    llm_max_new_tokens: int = 40
    llm_seed: int = 0


def clean_generated_text(text: str, max_chars: int = 200) -> str:
    """First line of generated text, printable ASCII only, whitespace collapsed, at most ``max_chars``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _UNPRINTABLE.sub(" ", line)
    line = " ".join(line.split())
    return line[:max_chars].strip(" ,.;:")


class LLMPromptRewriter:
    """Generate prompt variants per class with a causal LM (components in, ``from_pretrained`` for convenience)."""

    def __init__(self, model, tokenizer, name: str = "custom"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu") -> LLMPromptRewriter:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"--llm: cannot load a causal language model from {name_or_path!r} ({e}); give a "
                                    "local folder or a hub id that is already in the cache when offline") from e
        return cls(model, tok, name=str(name_or_path))

    def generate(self, instruction: str, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """``n`` cleaned continuations of ``instruction`` (sampling with top-p 0.9, seeded)."""
        import torch

        enc = self.tokenizer(instruction, return_tensors="pt").to(self.model.device)
        context = getattr(self.model.config, "max_position_embeddings", None) or \
            getattr(self.model.config, "n_positions", None)
        if context:  # never run past the model's context window
            room = int(context) - enc["input_ids"].shape[1]
            if room < 1:
                raise ValueError(f"--llm-instruction: {instruction!r} fills the model's whole context ({context} "
                                 "tokens); shorten it")
            max_new_tokens = min(max_new_tokens, room)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        outs = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                ids = self.model.generate(**enc, do_sample=True, top_p=0.9, max_new_tokens=max_new_tokens,
                                          num_return_sequences=n, pad_token_id=pad)
        for row in ids[:, enc["input_ids"].shape[1]:]:
            outs.append(clean_generated_text(self.tokenizer.decode(row, skip_special_tokens=True)))
        return outs


class PromptBuilder:
    """Candidates per class (templates x synonyms x tags, or cached LLM rewrites) and a seeded pick per image."""

    def __init__(self, config: PromptConfig | None = None, rewriter: LLMPromptRewriter | None = None,
                 cache_path: str | Path | None = None):
        self.config = config or PromptConfig()
        for t in self.config.templates:
            if "{name}" not in t:
                raise ValueError(f"--templates: template {t!r} has no {{name}} field")
        self.rewriter = rewriter
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self._cache = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt cache {self.cache_path} is not valid JSON ({e}); delete it to rebuild") from e

    def names(self, class_name: str) -> tuple[str, ...]:
        base = class_name.replace("_", " ")
        return CLASS_SYNONYMS.get(class_name.lower(), (base,)) if self.config.synonyms else (base,)

    def templates(self, class_name: str, tags: tuple[str, ...] = ()) -> list[str]:
        """All template prompts of a class (without the suffix)."""
        tag_options = [f"{t} " for t in tags] if (self.config.tags and tags) else [""]
        out = []
        for template in self.config.templates:
            for name in self.names(class_name):
                for tag in (tag_options if "{tags}" in template else [""]):
                    out.append(template.format(name=name, tags=tag))
        return list(dict.fromkeys(out))

    def has_llm_prompts(self, class_name: str) -> bool:
        """True when the cache holds enough rewrites of ``class_name`` made with the same model and instruction."""
        cfg = self.config
        entry = self._cache.get(class_name)
        return bool(entry and entry.get("llm") == cfg.llm and entry.get("instruction") == cfg.llm_instruction
                    and len(entry.get("prompts", [])) >= cfg.llm_variants)

    def llm_prompts(self, class_name: str) -> list[str]:
        """The cached LLM rewrites of a class, generating (and caching) them on first use."""
        cfg = self.config
        if self.has_llm_prompts(class_name):
            return self._cache[class_name]["prompts"][:cfg.llm_variants]
        if self.rewriter is None:
            raise ValueError(f"--llm {cfg.llm!r}: no language model was loaded to write prompts for {class_name!r}")
        name = self.names(class_name)[0]
        generated = self.rewriter.generate(cfg.llm_instruction.format(name=name), cfg.llm_variants,
                                           cfg.llm_max_new_tokens, cfg.llm_seed)
        # a continuation that lost the object's name is anchored to it again
        prompts = [g if name.lower() in g.lower() else f"a photo of a {name}, {g}".rstrip(", ") for g in generated]
        self._cache[class_name] = {"llm": cfg.llm, "instruction": cfg.llm_instruction, "prompts": prompts}
        if self.cache_path:
            atomic_write_json(self.cache_path, self._cache)
        return prompts

    def candidates(self, class_name: str, tags: tuple[str, ...] = ()) -> list[str]:
        return self.llm_prompts(class_name) if self.config.llm else self.templates(class_name, tags)

    def prompt_for(self, class_name: str, tags: tuple[str, ...], key: int) -> str:
        """The prompt of one image: a seeded pick among the candidates, plus the suffix."""
        options = self.candidates(class_name, tags)
        text = random.Random(key).choice(options)
        return f"{text}, {self.config.suffix}" if self.config.suffix else text
