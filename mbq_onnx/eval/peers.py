"""The users' real alternatives, measured beside our exports by ``tools/bench_e2e.py``.

- ONNX Runtime GenAI (``onnxruntime-genai``): its model builder's int4/int8 graphs of the float HF folder,
  run through GenAI's own generator. Threads: ``og.Config(dir).overlay(...)`` sets
  ``model.decoder.session_options.intra_op_num_threads`` in memory before ``og.Model`` loads — the
  ``genai_config.json`` on disk is never patched or copied.
- llama.cpp: ``convert_hf_to_gguf.py --outtype f32`` → ``llama-quantize`` Q4_0 / Q8_0 → ``llama-bench``
  (prefill/decode tok/s) and ``llama-perplexity`` (when built). Build it with ``tools/build_llama_cpp.sh``.

Everything built is cached under ``<cache>/peers``. Each ``measure`` call is one run (the caller interleaves
rounds and takes medians).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_STEPS = 4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- GenAI
def genai_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("onnxruntime-genai")
    except Exception:  # not installed
        return None


def build_genai(float_dir: Path, precision: str, block_size: int, cache: Path) -> Path:
    """GenAI builder output for ``float_dir`` at ``precision`` (``int4``/``int8``/``fp32``), made once."""
    out = Path(cache) / "genai" / f"{Path(float_dir).name}-{precision}-b{block_size}"
    if (out / "genai_config.json").is_file() and (out / "model.onnx").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(Path(float_dir).resolve()),
        "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", str(Path(cache).resolve() / "genai" / "hf-cache"),
        "--extra_options", "hf_token=false", f"block_size={block_size}",
    ]  # fmt: skip
    _log(f"GenAI builder: {precision} block {block_size} → {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # never from inside the onnxruntime_genai package folder (importing it there aborts)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(cache).resolve(), env=env)
    if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
        raise RuntimeError(f"GenAI builder failed ({proc.returncode}): {proc.stderr[-1500:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class GenaiModel:
    """A GenAI builder folder with one ``og.Model`` per thread count."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self._models: dict[int, Any] = {}

    def model(self, threads: int):
        if threads not in self._models:
            import onnxruntime_genai as og

            cfg = og.Config(str(self.model_dir))
            opts = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
            self._models[threads] = og.Model(cfg)
        return self._models[threads]

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.model_dir.glob("model.onnx*"))

    def measure(self, threads: int, ids: np.ndarray, prompt_tokens: int, decode_tokens: int) -> dict:
        """One run: ``append_tokens`` of the prompt (prefill), WARMUP_STEPS untimed steps, then
        ``decode_tokens`` timed ``generate_next_token`` calls (greedy; min_length = max_length so no EOS)."""
        import onnxruntime_genai as og

        model = self.model(threads)
        total = prompt_tokens + WARMUP_STEPS + decode_tokens
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(model, params)
        prompt = np.asarray(ids[:prompt_tokens], np.int32)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        prefill = time.perf_counter() - t0
        for _ in range(WARMUP_STEPS):
            gen.generate_next_token()
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            gen.generate_next_token()
        decode = time.perf_counter() - t0
        return {"prefill_tok_s": prompt_tokens / prefill, "decode_tok_s": decode_tokens / decode}

    def perplexity(self, ids: np.ndarray, window: int, threads: int) -> dict:
        """Perplexity over non-overlapping ``window``-token windows of ``ids`` (no BOS): one
        ``append_tokens`` per window, logits of every position from ``get_output('logits')``."""
        import onnxruntime_genai as og

        model = self.model(threads)
        nll, count = 0.0, 0
        for start in range(0, len(ids) - 1, window):
            w = np.asarray(ids[start : start + window], np.int32)
            if w.size < 2:
                break
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=int(w.size) + 1, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(w)
            logits = np.asarray(gen.get_output("logits"), np.float64)[0]
            nll += _nll(logits[:-1], w[1:])
            count += w.size - 1
        return {"ppl": math.exp(nll / count), "tokens": count, "window": window, "how": "GenAI og.Generator"}


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits - logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits).sum(-1))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def ort_perplexity(session, ids: np.ndarray, window: int, tau: float = 0.0, force: int = 0) -> dict:
    """Perplexity of one of our exports (an MbqSession) over non-overlapping windows, as above."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        w = np.asarray(ids[start : start + window], np.int64)
        if w.size < 2:
            break
        out = session.run(w[None], session.empty_cache(1), tau, force, all_positions=True)
        nll += _nll(np.asarray(out.logits, np.float64)[0, :-1], w[1:])
        count += w.size - 1
    return {"ppl": math.exp(nll / count), "tokens": count, "window": window, "how": "ORT MbqSession"}


# ------------------------------------------------------------------------------------------ llama.cpp
def find_llama_cpp(arg: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The llama.cpp dir (from ``--llama-cpp`` or ``MBQ_LLAMA_CPP``) and why not when absent.

    Accepted layouts: ``DIR/build/bin/llama-bench`` + ``DIR/src/convert_hf_to_gguf.py`` (what
    tools/build_llama_cpp.sh makes), or the binaries in ``DIR``/``DIR/bin`` with the source tree in DIR."""
    raw = arg or os.environ.get("MBQ_LLAMA_CPP")
    if not raw:
        return None, "no --llama-cpp DIR and no MBQ_LLAMA_CPP (build one with tools/build_llama_cpp.sh)"
    d = Path(raw)
    if not d.is_dir():
        return None, f"llama.cpp dir {d} does not exist"
    return d, ""


class LlamaCpp:
    def __init__(self, root: Path):
        self.root = Path(root)
        bins = [self.root / "build" / "bin", self.root / "bin", self.root]
        self.bin = next((b for b in bins if (b / "llama-bench").is_file()), None)
        srcs = [self.root / "src", self.root, self.root.parent]
        self.src = next((s for s in srcs if (s / "convert_hf_to_gguf.py").is_file()), None)

    def missing(self) -> str:
        if self.bin is None:
            return f"no llama-bench under {self.root} (build/bin, bin)"
        if not (self.bin / "llama-quantize").is_file():
            return f"no llama-quantize in {self.bin}"
        if self.src is None:
            return f"no convert_hf_to_gguf.py under {self.root} (src/)"
        return ""

    def version(self) -> str:
        for f in ("SOURCE",):
            if (self.root / f).is_file():
                return (self.root / f).read_text().strip()
        try:
            p = subprocess.run([str(self.bin / "llama-bench"), "--version"], capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    def gguf(self, float_dir: Path, quant: str, cache: Path) -> Path:
        out_dir = Path(cache) / "llama.cpp-models"
        out_dir.mkdir(parents=True, exist_ok=True)
        f32 = out_dir / f"{Path(float_dir).name}-f32.gguf"
        if not f32.is_file():
            _log(f"llama.cpp: converting {float_dir} to {f32}")
            tmp = f32.with_suffix(".tmp")
            cmd = [
                sys.executable,
                str(self.src / "convert_hf_to_gguf.py"),
                str(float_dir),
                "--outtype",
                "f32",
            ]
            proc = subprocess.run([*cmd, "--outfile", str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"convert_hf_to_gguf.py failed: {proc.stderr[-1500:]}")
            tmp.rename(f32)
        out = out_dir / f"{Path(float_dir).name}-{quant}.gguf"
        if not out.is_file():
            tmp = out.with_suffix(".tmp")
            proc = subprocess.run(
                [str(self.bin / "llama-quantize"), str(f32), str(tmp), quant], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"llama-quantize {quant} failed: {proc.stderr[-1500:]}")
            tmp.rename(out)
        return out

    def measure(self, gguf: Path, threads: int, prompt_tokens: int, decode_tokens: int) -> dict:
        cmd = [
            str(self.bin / "llama-bench"), "-m", str(gguf), "-p", str(prompt_tokens),
            "-n", str(decode_tokens), "-t", str(threads), "-r", "1", "-o", "json",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-bench failed ({proc.returncode}): {proc.stderr[-800:]}")
        res = {}
        for entry in json.loads(proc.stdout):
            if entry.get("n_gen", 0) == 0 and entry.get("n_prompt", 0) > 0:
                res["prefill_tok_s"] = float(entry["avg_ts"])
            elif entry.get("n_gen", 0) > 0 and entry.get("n_prompt", 0) == 0:
                res["decode_tok_s"] = float(entry["avg_ts"])
        if set(res) != {"prefill_tok_s", "decode_tok_s"}:
            raise RuntimeError(f"llama-bench: unexpected JSON {proc.stdout[:500]}")
        return res

    def perplexity(self, gguf: Path, text: str, tokens: int, window: int, threads: int) -> dict | None:
        exe = self.bin / "llama-perplexity"
        if not exe.is_file():
            return None
        f = gguf.with_suffix(".ppl.txt")
        f.write_text(text)
        chunks = max(1, tokens // window)
        cmd = [str(exe), "-m", str(gguf), "-f", str(f), "-c", str(window), "--chunks", str(chunks)]
        proc = subprocess.run([*cmd, "-t", str(threads), "-b", str(window)], capture_output=True, text=True)
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
        if proc.returncode != 0 or not m:
            return {"ppl": None, "error": (proc.stderr or proc.stdout)[-400:]}
        # llama-perplexity scores only the second half of each window (its tokenizer, with BOS)
        return {
            "ppl": float(m.group(1)),
            "tokens": chunks * (window - window // 2),
            "window": window,
            "how": "llama-perplexity (scores the 2nd half of each window; own tokenizer, BOS added)",
        }
