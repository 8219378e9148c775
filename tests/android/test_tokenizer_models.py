"""tools/make_android_tokenizer.py: the onnxruntime-extensions tokenizer models the Android app runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is in the dev extras")

REPO = Path(__file__).resolve().parents[2]


def _tool():
    path = REPO / "tools" / "make_android_tokenizer.py"
    spec = importlib.util.spec_from_file_location("make_android_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _byte_bpe(folder: Path) -> Path:
    """A small byte-level BPE trained here (so merges exist), saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = ["The committee met on Tuesday to review the annual budget.", "roads and the new hospital"]
    tok.train_from_iterator(text * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_models_match_the_tokenizers_library(tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path
    from tokenizers import Tokenizer

    model_dir = _byte_bpe(tmp_path / "model")
    enc_path, dec_path = _tool().make(model_dir)  # also checks the tool's own sample strings
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    enc = ort.InferenceSession(str(enc_path), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), opts, providers=["CPUExecutionProvider"])
    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = "The new budget meets the hospital's needs<|endoftext|> ünïcode ✓"
    ids = enc.run(None, {"str": np.array([text])})[0][0].tolist()
    assert ids == ref.encode(text, add_special_tokens=False).ids
    assert len(ids) < len(text.encode())  # merges were applied
    decoded = str(dec.run(None, {"ids": np.array(ids, np.int64)})[0].reshape(-1)[0])
    assert decoded == ref.decode(ids, skip_special_tokens=True)
    assert "<|endoftext|>" not in decoded


def test_non_bpe_tokenizer_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    folder = tmp_path / "wl"
    folder.mkdir()
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
    tool = _tool()
    with pytest.raises(tool.TokenizerExportError, match="only BPE"):
        tool.make(folder)
    assert not (folder / "tokenizer.onnx").exists()
