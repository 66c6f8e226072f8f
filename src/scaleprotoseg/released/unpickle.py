"""A restricted reader for PyTorch checkpoint files that never runs code from the file.

`torch.save(model)` pickles the whole module: loading it the usual way imports the classes it names and
calls whatever functions the pickle asks for. Here the pickle is read by an unpickler whose `find_class`
hands out only

- our own tensor-rebuild functions under the names of torch's (`torch._utils._rebuild_tensor_v2`,
  `_rebuild_parameter`, …), markers for the storage types (`torch.FloatStorage`, …), `OrderedDict`, `set`,
  `torch.Size`, dtypes — values and pure constructors, nothing that reaches the system;
- for a class of the released code or of `torch.nn` (module in `MODEL_NAMESPACES`, CapWords name) an
  **inert stand-in** (`Inert`): it records the arguments and the state the pickle gives it as plain data and
  has no behaviour.

Every other global (`os.system`, `builtins.eval`, `subprocess.Popen`, a function of the released code…)
is refused with `UnsafeCheckpointError`, before anything is called. Tensors are rebuilt on the CPU whatever
device the file recorded (the released files say `cuda:0`).

Both serialisation formats are read: the zip format (torch ≥ 1.6: `<name>/data.pkl` and one record
`<name>/data/<key>` per storage) and the legacy format (a pickled magic number, protocol version and
system information, the pickled object, the list of storage keys, then each storage as an int64 element
count followed by its raw bytes).

Sizes are checked before anything is read or allocated: a storage's declared size (numel × element size)
must fit the bytes actually there (legacy: what is left of the file; zip: its record's declared size), and a
zip record may expand at most `MAX_EXPANSION`× its compressed size (torch stores records uncompressed, so
a genuine checkpoint expands 1×; a 2 MB file holding a deflated 2 GiB storage is refused, not read).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError, ScaleProtoSegError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Where the classes of a released model live; their classes become inert stand-ins.
MODEL_NAMESPACES = ("segmentation", "deeplab_pytorch", "libs", "encoding", "torch.nn.modules", "torch.nn.parallel")
_STORAGE_DTYPES = {
    "Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}
_DTYPE_NAMES = ("float64", "double", "float32", "float", "float16", "half", "bfloat16", "int64", "long", "int32",
                "int", "int16", "short", "int8", "uint8", "bool")
_HOW_TO_FIX = "use the file exactly as the authors released it (download it again if in doubt)"
_REDOWNLOAD = "download it again and compare its size and checksum with the release"
MAX_EXPANSION = 64  # a zip record's declared size / its compressed size (torch writes records stored: 1×)
_SLACK = 1 << 20  # bytes any record may hold whatever its compressed size (a tiny record compresses badly)


class UnsafeCheckpointError(ScaleProtoSegError, pickle.UnpicklingError):
    """The pickle asks for a function or class outside the allow-list; nothing from the file was run."""


class Inert:
    """Stand-in for a class of the released code: records what the pickle gives it, runs nothing.

    `_args`: the arguments of the NEWOBJ / REDUCE that made it; `_state`: what BUILD gave it (a module's
    `__dict__`). Subclasses are made per pickled class by `standin(module, name)`."""

    pickled_as: tuple[str, str] = ("", "")

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _kwargs=kwargs, _state=None)
        return obj

    def __init__(self, *args, **kwargs):  # the arguments are recorded by __new__
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    @classmethod
    def qualname(cls) -> str:
        return ".".join(cls.pickled_as)

    @property
    def attrs(self) -> dict:
        """The pickled instance dictionary ({} when the pickle gave none)."""
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = state[0]  # (dict, slots)
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.qualname()}>"


_STANDINS: dict[tuple[str, str], type] = {}


def standin(module: str, name: str) -> type:
    """The (cached) inert stand-in class for `module.name`."""
    key = (module, name)
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (Inert,), {"pickled_as": key, "__module__": __name__,
                                               "__qualname__": f"Inert[{module}.{name}]"})
    return _STANDINS[key]


@dataclass(frozen=True)
class StorageKind:
    """What `torch.FloatStorage` & co. stand for in a pickle: the element type of a storage."""

    name: str
    dtype: torch.dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """A view of the flat CPU `storage` (never anything else: the arguments are checked, nothing is called)."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("a tensor whose storage is not a storage record")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
        raise pickle.UnpicklingError(f"a tensor with an invalid layout (size {size}, stride {stride})")
    if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel():
        raise pickle.UnpicklingError(f"a tensor of size {size} reaches past the end of its storage")
    return storage.as_strided(size, stride, storage.storage_offset() + offset)  # a pre-1.0 view starts inside


def _rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data


def _latin1(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only, no codec lookup by name."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"refused _codecs.encode(..., {encoding!r}): only latin-1 bytes are read")
    return codecs.latin_1_encode(text)[0]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch._utils", n): _rebuild_tensor for n in ("_rebuild_tensor", "_rebuild_tensor_v2")},
    **{("torch._utils", n): _rebuild_parameter for n in ("_rebuild_parameter", "_rebuild_parameter_with_state")},
}


def _storage_kind(module: str, name: str) -> StorageKind | None:
    if module in ("torch", "torch.cuda") and name.endswith("Storage") and name[:-7] in _STORAGE_DTYPES:
        return StorageKind(name, _STORAGE_DTYPES[name[:-7]])
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return StorageKind(name, torch.uint8)
    return None


def _looks_like_class(name: str) -> bool:
    return name.lstrip("_")[:1].isupper()


class RestrictedUnpickler(pickle.Unpickler):
    """`find_class` hands out only allowed values and inert stand-ins; `persistent_load` asks `storage(kind,
    key, location, numel, view)` for the flat CPU tensor behind a storage record."""

    def __init__(self, file, storage: Callable | None, source: Path):
        super().__init__(file)
        self._storage, self._source = storage, source

    def find_class(self, module: str, name: str):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # Python 2 names: __builtin__ → builtins
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        kind = _storage_kind(module, name)
        if kind is not None:
            return kind
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if any(module == ns or module.startswith(ns + ".") for ns in MODEL_NAMESPACES) and _looks_like_class(name):
            return standin(module, name)
        raise UnsafeCheckpointError(
            f"{self._source}: refused to load: the file asks for `{module}.{name}`, which is neither a tensor "
            f"rebuilder nor a model class of the released code (classes from {', '.join(MODEL_NAMESPACES)}); "
            f"nothing from the file was run. Only checkpoints of the released models can be imported; {_HOW_TO_FIX}.")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unknown persistent record {pid!r}")
        if pid[0] == "module" and len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], Inert):
            return pid[1]  # the legacy format names each module class with its source code: keep the stand-in only
        if pid[0] != "storage" or len(pid) < 5 or self._storage is None or not isinstance(pid[1], StorageKind):
            raise pickle.UnpicklingError(f"unexpected persistent record {pid[:2]!r}")
        _, kind, key, location, numel = pid[:5]
        return self._storage(kind, str(key), str(location), int(numel), pid[5] if len(pid) > 5 else None)


@dataclass
class Loaded:
    """What a checkpoint file holds, as data: `obj` (inert modules, dicts, CPU tensors), the format read
    and the devices its storages were recorded on."""

    obj: Any
    format: str
    locations: tuple[str, ...]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _from_bytes(raw: bytes, dtype: torch.dtype, numel: int, little: bool, where: str) -> torch.Tensor:
    nbytes = numel * _element_size(dtype)
    if len(raw) < nbytes:
        raise ArtifactError(f"{where}: storage has {len(raw)} bytes, {nbytes} expected")
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    u8 = torch.frombuffer(bytearray(raw[:nbytes]), dtype=torch.uint8)
    if not little:
        u8 = u8.view(-1, _element_size(dtype)).flip(1).reshape(-1)
    return u8.view(dtype)


def _zip_record(path: Path, zf: zipfile.ZipFile, record: str, need: int | None = None) -> bytes:
    """The bytes of `record`, its declared size checked first: at least `need` (a storage's numel × element
    size) and at most `MAX_EXPANSION`× what it takes in the file, so a bomb is refused before it is inflated."""
    info = zf.getinfo(record)
    if need is not None and info.file_size < need:
        raise ArtifactError(f"{path} is truncated or corrupt: record {record} holds {info.file_size:,} bytes but its "
                            f"storage declares {need:,}; {_REDOWNLOAD}.")
    if info.file_size > MAX_EXPANSION * info.compress_size + _SLACK:
        raise ArtifactError(
            f"{path}: record {record} declares {info.file_size:,} bytes from {info.compress_size:,} compressed (more "
            f"than {MAX_EXPANSION}× expansion; PyTorch stores records uncompressed): refused before reading it, "
            f"as a decompression bomb; {_HOW_TO_FIX}.")
    return zf.read(record)


def _read_zip(path: Path, zf: zipfile.ZipFile) -> Loaded:
    names = set(zf.namelist())
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise ArtifactError(f"{path}: a zip archive without exactly one data.pkl, so not a PyTorch checkpoint; {_HOW_TO_FIX}.")
    prefix = pkl[0][: -len("data.pkl")]
    little = (zf.read(prefix + "byteorder").decode().strip() != "big") if prefix + "byteorder" in names else True
    cache: dict[str, torch.Tensor] = {}
    locations: set[str] = set()

    def storage(kind: StorageKind, key: str, location: str, numel: int, view) -> torch.Tensor:
        record = f"{prefix}data/{key}"
        if record not in names:
            raise ArtifactError(f"{path}: storage record {record} is missing")
        if key not in cache:
            need = max(numel, 0) * _element_size(kind.dtype)
            cache[key] = _from_bytes(_zip_record(path, zf, record, need), kind.dtype, numel, little, f"{path}:{record}")
        locations.add(location)
        return cache[key]

    obj = RestrictedUnpickler(io.BytesIO(_zip_record(path, zf, pkl[0])), storage, path).load()
    return Loaded(obj, "zip", tuple(sorted(locations)))


def _read_legacy(path: Path, fh) -> Loaded:
    def plain():  # the small pickles around the object: numbers, a dict, a list of keys
        return RestrictedUnpickler(fh, None, path).load()

    if plain() != LEGACY_MAGIC:
        raise ArtifactError(f"{path} is neither a zip nor a legacy PyTorch checkpoint (no magic number); {_HOW_TO_FIX}.")
    if (version := plain()) != LEGACY_PROTOCOL:
        raise ArtifactError(f"{path}: legacy format protocol {version!r} is not {LEGACY_PROTOCOL}; {_HOW_TO_FIX}.")
    info = plain()
    little = bool(info.get("little_endian", True)) if isinstance(info, dict) else True
    roots: dict[str, torch.Tensor] = {}
    locations: set[str] = set()
    file_size, declared = path.stat().st_size, [0]

    def storage(kind: StorageKind, key: str, location: str, numel: int, view) -> torch.Tensor:
        if key not in roots:
            declared[0] += max(numel, 0) * _element_size(kind.dtype)
            if declared[0] > file_size:  # the storages follow the pickle in the file: they cannot be larger than it
                raise ArtifactError(f"{path} is truncated or corrupt: with storage {key} its storages declare "
                                    f"{declared[0]:,} bytes, more than the file's {file_size:,}; {_REDOWNLOAD}.")
            roots[key] = torch.empty(numel, dtype=kind.dtype)  # filled below, once the keys are read
        locations.add(location)
        if view is None:
            return roots[key]
        _, offset, size = view  # pre-1.0 storage views: a slice of the root storage (element offsets)
        return roots[key][int(offset): int(offset) + int(size)]

    obj = RestrictedUnpickler(fh, storage, path).load()
    keys = [str(k) for k in plain()]
    if set(keys) != set(roots):
        raise ArtifactError(f"{path}: the storage list does not match the tensors ({len(keys)} vs {len(roots)})")
    for key in keys:
        head = fh.read(8)
        if len(head) < 8:
            raise EOFError(f"storage {key} is missing")
        numel = int.from_bytes(head, "little" if little else "big", signed=True)
        root = roots[key]
        if numel != root.numel():
            raise ArtifactError(f"{path}: storage {key} holds {numel} elements, {root.numel()} expected")
        if numel:
            buf = root.view(torch.uint8).numpy()
            if fh.readinto(memoryview(buf)) != buf.nbytes:
                raise EOFError(f"storage {key} ends early")
            if not little:
                root.copy_(root.view(torch.uint8).view(-1, root.element_size()).flip(1).reshape(-1).view(root.dtype))
    return Loaded(obj, "legacy", tuple(sorted(locations)))


def read_checkpoint(path: str | Path) -> Loaded:
    """Read a `torch.save` file (zip or legacy format) as data, without running anything from it. A refused
    global raises `UnsafeCheckpointError`; a truncated or corrupt file an `ArtifactError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found: give the path of a released checkpoint file.")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _read_zip(path, zf)
        with path.open("rb") as fh:
            if fh.read(2) == b"PK":
                raise zipfile.BadZipFile("a zip archive without its central directory")
            fh.seek(0)
            return _read_legacy(path, fh)
    except (UnsafeCheckpointError, ArtifactError):
        raise
    except Exception as exc:  # truncated pickle, bad CRC, short storage, malformed records
        raise ArtifactError(
            f"{path} is truncated or corrupt and cannot be read ({type(exc).__name__}: {exc}); {_REDOWNLOAD}.") from exc


MAX_MODULE_DEPTH = 200  # nested sub-modules; the deepest released network (ResNet-101 + heads) has fewer than 10


def _walk(module: Inert, prefix: str = ""):
    """(dotted prefix, module) of a pickled module and its sub-modules, depth first, without recursion: a module
    that contains itself, or a chain deeper than `MAX_MODULE_DEPTH` (a malformed or hostile file), is refused
    with an `ArtifactError`, never a RecursionError. A module shared by two parents is visited under both."""
    stack = [(prefix, module, ())]
    while stack:
        where, m, ancestors = stack.pop()
        if id(m) in ancestors:
            raise ArtifactError(f"malformed checkpoint: module {where.rstrip('.') or '(root)'} contains itself (a cycle "
                                "in the module tree); download the file again or ask its authors.")
        if len(ancestors) > MAX_MODULE_DEPTH:
            raise ArtifactError(f"malformed checkpoint: the module tree is deeper than {MAX_MODULE_DEPTH} levels "
                                f"(at {where[:80]}…); no released network is.")
        yield where, m
        children = [(f"{where}{n}.", c) for n, c in (m.attrs.get("_modules") or {}).items() if isinstance(c, Inert)]
        stack.extend((w, c, (*ancestors, id(m))) for w, c in reversed(children))


def tensors_of(module: Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a pickled module (inert stand-in): its parameters and persistent buffers, recursively."""
    out: dict[str, torch.Tensor] = {}
    for where, m in _walk(module, prefix):
        attrs = m.attrs
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (attrs.get(group) or {}).items():
                if value is not None and not (group == "_buffers" and name in skip):
                    if not isinstance(value, torch.Tensor):
                        raise ArtifactError(f"{where}{name} is a {type(value).__name__}, not a tensor")
                    out[where + name] = value
    return out


def modules_of(module: Inert, prefix: str = "") -> dict[str, Inert]:
    """Every sub-module of a pickled module by its dotted path ('' is the module itself)."""
    return {where.rstrip("."): m for where, m in _walk(module, prefix)}
