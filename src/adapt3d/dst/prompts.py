"""Text prompts for 3D-DST: templates from class names, synonyms and mesh keyword tags, optionally rewritten by a
local text-generation model (any transformers causal LM by id or path, cached per class), or imported captions.

Class names: a class given as an ImageNet synset (3D-DST's model list) is named by :mod:`adapt3d.dst.imagenet`
("n02690373" -> "airliner"); other classes by their key with '_' as spaces.

Imported captions (``captions=PATH``, e.g. 3D-DST's released MiniGPT-4 captions ``ccvl/3D-DST-captions``): a CSV/TSV,
JSON or JSON-lines file read by :func:`load_captions`. Each caption belongs to a class, given by a class column
(``synset``, ``class``, ``wnid``, ``category``, ``label``, ``class_name``) or, failing that, by the ImageNet synset in
an image-file column (``image``, ``file``, ``filename``, ``file_name``, ``path``, ``image_path``, ``img``:
``n02690373_1234.JPEG``); the text is the ``caption`` (or ``captions``, ``prompt``, ``text``, ``description``)
column. A CSV without a header row is read as (class or image file, caption). JSON may also be ``{class: [captions]}``.
Only the job's classes are kept, at most ``caption_limit`` per class in file order, so a multi-million-row file is
streamed in bounded memory. A class of the job that has no caption falls back to the templates.

3D-DST's released code has one template, ``"An image of {class}, best quality, extremely detailed"`` plus a fixed
negative prompt (both below); its paper combines class names with CAD keyword tags and lets an LLM enrich them (the
LLM instruction was never published, so ours is a plain completion prompt, configurable).

Choice per image: ``prompt_for(class, tags, key)`` picks one candidate with ``random.Random(key)``, so the same
image always gets the same prompt. LLM candidates are generated once per class and stored in a JSON cache
(``prompts.json`` of the run): reruns and other shards reuse them instead of sampling again.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from adapt3d.dst.imagenet import class_display_name
from adapt3d.utils.io import atomic_write_json

__all__ = ["DST_SUFFIX", "DST_NEGATIVE", "CLASS_SYNONYMS", "DEFAULT_TEMPLATES", "PromptConfig", "PromptBuilder",
           "LLMPromptRewriter", "clean_generated_text", "load_captions", "check_captions_file"]

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
    captions: str | None = None
    """Imported captions file (see the module docstring); None = templates or LLM."""
    caption_limit: int = 1000
    """Captions kept per class (the first ones in the file)."""


_CLASS_COLUMNS = ("synset", "class", "wnid", "category", "label", "class_name")
_FILE_COLUMNS = ("image", "file", "filename", "file_name", "path", "image_path", "img")
_TEXT_COLUMNS = ("caption", "captions", "prompt", "text", "description")
_SYNSET_IN = re.compile(r"(n\d{8})")


def _caption_key(record: dict) -> str | None:
    for col in _CLASS_COLUMNS:
        if record.get(col):
            return str(record[col]).strip()
    for col in _FILE_COLUMNS:
        if record.get(col):
            m = _SYNSET_IN.search(Path(str(record[col])).name)
            if m:
                return m.group(1)
    return None


def _headerless_key(text: str) -> str:
    """The class of a headerless row's first cell: an image file name gives its synset, anything else is the
    class itself."""
    text = text.strip()
    m = _SYNSET_IN.search(Path(text).name)
    return m.group(1) if (m and Path(text).suffix) else text


def _caption_text(record: dict):
    for col in _TEXT_COLUMNS:
        if col in record and record[col] is not None:
            return record[col]
    return None


def _caption_records(path: Path):
    """Yield (class key, caption text or list) from a captions file (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
            first = next(reader, None)
            if first is None:
                return
            header = [h.strip().lower() for h in first]
            has_header = any(h in _CLASS_COLUMNS + _FILE_COLUMNS for h in header) and \
                any(h in _TEXT_COLUMNS for h in header)
            if has_header:
                for row in reader:
                    rec = dict(zip(header, row))
                    yield _caption_key(rec), _caption_text(rec)
                return
            if len(first) < 2:
                raise ValueError(f"--captions: {path} has no header with a class and a caption column "
                                 f"({'/'.join(_CLASS_COLUMNS)} and {'/'.join(_TEXT_COLUMNS)}) and fewer than two "
                                 "columns")
            for row in itertools.chain([first], reader):  # headerless: (class or image file, caption)
                if len(row) >= 2:
                    yield _headerless_key(row[0]), row[1]
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rec = {str(k).lower(): v for k, v in rec.items()} if isinstance(rec, dict) else {}
                    yield _caption_key(rec), _caption_text(rec)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for key, value in data.items():
                yield str(key), value
        elif isinstance(data, list):
            for rec in data:
                if not isinstance(rec, dict):
                    raise ValueError(f"--captions: {path} holds a list of {type(rec).__name__}, expected objects "
                                     "with a class and a caption")
                rec = {str(k).lower(): v for k, v in rec.items()}
                yield _caption_key(rec), _caption_text(rec)
        else:
            raise ValueError(f"--captions: {path} must hold an object or a list")
    else:
        raise ValueError(f"--captions: {path} must be .csv, .tsv, .json or .jsonl")


def check_captions_file(path: str | Path) -> Path:
    """Cheap check before any work: the file exists, its format is known and its first record has a class and a
    caption. Returns the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions: {path} does not exist")
    try:
        first = next(iter(_caption_records(path)), None)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--captions: {path} could not be read ({e})") from e
    if first is None:
        raise ValueError(f"--captions: {path} holds no captions")
    if first[0] is None or first[1] is None:
        raise ValueError(f"--captions: {path}: no class (columns {'/'.join(_CLASS_COLUMNS)}, or an ImageNet synset "
                         f"in {'/'.join(_FILE_COLUMNS)}) or no caption ({'/'.join(_TEXT_COLUMNS)}) in its first "
                         "record")
    return path


def load_captions(path: str | Path, classes: list[str] | None = None, limit: int = 1000) -> dict[str, list[str]]:
    """Captions per class from ``path`` (see the module docstring), keyed by the job's class names.

    A caption keyed ``k`` belongs to job class ``c`` when ``k == c`` or both name the same class (an ImageNet synset
    and its name, e.g. 'n02690373' and 'airliner'). ``classes`` None keeps every class of the file."""
    path = check_captions_file(path)
    wanted: dict[str, str] | None = None
    if classes is not None:
        wanted = {}
        for c in classes:
            wanted.setdefault(c, c)
            wanted.setdefault(class_display_name(c).lower(), c)
    out: dict[str, list[str]] = {}
    for key, text in _caption_records(path):
        if key is None or text is None:
            continue
        if wanted is None:
            target = key
        else:
            target = wanted.get(key) or wanted.get(class_display_name(key).lower())
            if target is None:
                continue
        bucket = out.setdefault(target, [])
        for t in (text if isinstance(text, list) else [text]):
            t = " ".join(str(t).split())
            if t and len(bucket) < limit:
                bucket.append(t)
    return out


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
        self.captions: dict[str, list[str]] | None = None
        """Imported captions per class (set by :meth:`load_captions`), used instead of templates."""
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self._cache = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt cache {self.cache_path} is not valid JSON ({e}); delete it to rebuild") from e

    def names(self, class_name: str) -> tuple[str, ...]:
        """The names a class is called in prompts (its synonyms when enabled; ImageNet synsets by their name)."""
        base = class_display_name(class_name)
        if not self.config.synonyms:
            return (base,)
        return CLASS_SYNONYMS.get(class_name.lower(), CLASS_SYNONYMS.get(base.lower(), (base,)))

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

    def load_captions(self, classes: list[str]) -> dict[str, int]:
        """Read the configured captions file for ``classes``; returns the number of captions per class."""
        self.captions = load_captions(self.config.captions, classes, self.config.caption_limit)
        return {c: len(self.captions.get(c, [])) for c in classes}

    def source(self, class_name: str) -> str:
        """Where a class's prompts come from: 'captions', 'llm' or 'templates'."""
        if self.config.captions:
            return "captions" if (self.captions or {}).get(class_name) else "templates"
        return "llm" if self.config.llm else "templates"

    def candidates(self, class_name: str, tags: tuple[str, ...] = ()) -> list[str]:
        source = self.source(class_name)
        if source == "captions":
            return self.captions[class_name]
        return self.llm_prompts(class_name) if source == "llm" else self.templates(class_name, tags)

    def prompt_for(self, class_name: str, tags: tuple[str, ...], key: int) -> str:
        """The prompt of one image: a seeded pick among the candidates, plus the suffix."""
        options = self.candidates(class_name, tags)
        text = random.Random(key).choice(options)
        return f"{text}, {self.config.suffix}" if self.config.suffix else text
