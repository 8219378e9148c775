#!/usr/bin/env python3
"""Make the Android app's tokenizer models: ONNX graphs of onnxruntime-extensions tokenizer ops.

The app tokenizes with ONNX Runtime itself (the ``onnxruntime-extensions-android`` AAR provides
the ops), so no tokenizer is hand-written in Java. From a model dir's HF ``tokenizer.json`` (a
byte-level BPE, e.g. SmolLM2's) this writes:

- ``tokenizer.onnx``: one ``HfJsonTokenizer`` node (string ``str [N]`` → int64 ``ids [N, n]``), the
  tokenizer JSON embedded as attributes (extensions' "schema v2" route);
- ``detokenizer.onnx``: one ``BpeDecoder`` node (int64 ``ids [n]`` → string ``str [1]``), special
  tokens skipped, built from the vocabulary and GPT-2's byte decoder.

Why not ``onnxruntime_extensions.gen_processing_models(AutoTokenizer...)``: with transformers 5 it
fails on ``TokenizersBackend`` and its schema-v2 path looks files up on the model hub. The graphs
are built here with the same extensions API (``SingleOpGraph.build_graph``) from the local files,
with ``tokenizer_class`` set to ``GPT2Tokenizer`` in the embedded config.

Both graphs are checked against the ``tokenizers`` library on sample strings before they are
written (atomically). Usage: ``python tools/make_android_tokenizer.py MODEL_DIR [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mbq_onnx.atomic import replace_file

SAMPLES = (
    "The capital of France is",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Héllo wörld — 生活的真谛 🙂 61 + 0.5",
    "<|im_start|>user\nHi<|im_end|>",
)


class TokenizerExportError(RuntimeError):
    """The tokenizer cannot be turned into extensions models, or they disagree with the reference."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character → byte map (the inverse of ``bytes_to_unicode``)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def build_models(tokenizer_json: Path, tokenizer_config: Path | None) -> tuple[object, object]:
    """The (tokenizer, detokenizer) ONNX models for a byte-level BPE ``tokenizer.json``."""
    from onnxruntime_extensions import SingleOpGraph, make_onnx_model

    text = tokenizer_json.read_text(encoding="utf-8")
    spec = json.loads(text)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        kind = model.get("type")
        raise TokenizerExportError(f"{tokenizer_json}: only BPE tokenizers are supported, got {kind!r}")
    pre = json.dumps(spec.get("pre_tokenizer"))
    if "ByteLevel" not in pre:
        raise TokenizerExportError(f"{tokenizer_json}: only byte-level BPE (GPT-2 style) is supported")
    config = {}
    if tokenizer_config is not None and tokenizer_config.is_file():
        config = json.loads(tokenizer_config.read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"  # extensions does not know transformers 5's TokenizersBackend
    encoder = make_onnx_model(
        SingleOpGraph.build_graph(
            "HfJsonTokenizer", tokenizer_vocab=text, tokenizer_config=json.dumps(config)
        )
    )

    vocab: dict[str, int] = dict(model["vocab"])
    added = {int(t["id"]): t["content"] for t in spec.get("added_tokens", [])}
    for tid, content in added.items():
        vocab[content] = tid
    id_to_token = [""] * (max(vocab.values()) + 1)
    for token, tid in vocab.items():
        id_to_token[tid] = token
    special = [int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")]
    decoder = make_onnx_model(
        SingleOpGraph.build_graph(
            "BpeDecoder",
            id_vocab="\n".join(id_to_token),
            byte_decoder="\n".join(f"{ord(ch)}\t{b}" for ch, b in _byte_decoder().items()),
            added_tokens="\n".join(f"{tid}\t{content}" for tid, content in added.items()),
            all_special_ids="\n".join(map(str, special)),
            skip_special_tokens=1,
        )
    )
    return encoder, decoder


def check_models(
    encoder: object, decoder: object, tokenizer_json: Path, samples: tuple[str, ...] = SAMPLES
) -> None:
    """Run both graphs in ONNX Runtime and compare with the ``tokenizers`` library."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    enc = ort.InferenceSession(encoder.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(decoder.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref = Tokenizer.from_file(str(tokenizer_json))
    for text in samples:
        want = ref.encode(text, add_special_tokens=False).ids
        got = enc.run(None, {"str": np.array([text])})[0][0].tolist()
        if got != want:
            raise TokenizerExportError(
                f"tokenizer.onnx disagrees with tokenizers on {text!r}: {got} != {want}"
            )
        back = str(dec.run(None, {"ids": np.array(want, np.int64)})[0].reshape(-1)[0])
        if back != ref.decode(want, skip_special_tokens=True):
            raise TokenizerExportError(f"detokenizer.onnx disagrees with tokenizers on {text!r}: {back!r}")


def _save_atomic(model: object, path: Path) -> None:
    import onnx

    with replace_file(path) as tmp:
        onnx.save(model, str(tmp))


def make(model_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``tokenizer.onnx`` and ``detokenizer.onnx`` for ``model_dir`` (into ``out_dir`` if given)."""
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise TokenizerExportError(f"{model_dir} has no tokenizer.json")
    encoder, decoder = build_models(tokenizer_json, model_dir / "tokenizer_config.json")
    check_models(encoder, decoder, tokenizer_json)
    out = out_dir or model_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "tokenizer.onnx", out / "detokenizer.onnx"
    _save_atomic(encoder, paths[0])
    _save_atomic(decoder, paths[1])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", type=Path, help="folder with the model's tokenizer.json (an exported model dir)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the model dir)")
    args = parser.parse_args(argv)
    try:
        for path in make(args.model_dir, args.out):
            print(path)
    except (TokenizerExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
