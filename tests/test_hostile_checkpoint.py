"""Hostile released checkpoints: a small file that declares huge storages is refused before anything is
inflated or allocated (issue 26), with an ArtifactError naming the file and the record."""

from __future__ import annotations

import io
import pickle
import time
import tracemalloc
import zipfile
from collections import OrderedDict

import pytest
import torch

from scaleprotoseg.errors import ArtifactError
from scaleprotoseg.released.unpickle import LEGACY_MAGIC, LEGACY_PROTOCOL, read_checkpoint

MiB = 1 << 20


class _Storage:
    """A storage placeholder the pickler writes as the persistent record ('storage', FloatStorage, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        n = self.storage.numel
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (n,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _pickle(obj, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _zip_checkpoint(path, numel: int, member_bytes: int, chunk: int = 16 * MiB) -> None:
    """A torch-style zip: archive/data.pkl holding {'w': tensor of `numel` floats} and archive/data/0, a DEFLATED
    record of `member_bytes` zeros (written in chunks: the test never holds it in memory)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _pickle({"w": _Tensor(_Storage("0", numel))}))
        zf.writestr("archive/byteorder", "little")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as out:
            zeros = bytes(chunk)
            for start in range(0, member_bytes, chunk):
                out.write(zeros[: min(chunk, member_bytes - start)])


def _measure(fn):
    """(exception raised by fn, seconds, peak bytes traced by tracemalloc)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 (returned for the test to check)
        err = exc
    else:
        err = None
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return err, seconds, peak


def test_zip_bomb_record_refused_before_inflating(tmp_path):
    declared = 256 * MiB  # deflated zeros: ~256 KB in the file
    path = tmp_path / "bomb.pth"
    _zip_checkpoint(path, declared // 4, declared)
    assert path.stat().st_size < 2 * MiB
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("archive/data/0").file_size == declared
    err, seconds, peak = _measure(lambda: read_checkpoint(path))
    assert isinstance(err, ArtifactError), err
    msg = str(err)
    assert str(path) in msg and "archive/data/0" in msg and "decompression bomb" in msg
    assert "download it again" in msg  # says how to fix
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB while refusing a {declared / MiB:.0f} MiB record"
    assert seconds < 5


def test_zip_storage_larger_than_its_record_refused(tmp_path):
    """data.pkl declares 2 GiB of floats; the record holds 64 bytes: refused without allocating."""
    path = tmp_path / "liar.pth"
    _zip_checkpoint(path, numel=1 << 29, member_bytes=64)
    err, _, peak = _measure(lambda: read_checkpoint(path))
    assert isinstance(err, ArtifactError), err
    assert str(path) in str(err) and "archive/data/0" in str(err) and "declares 2,147,483,648" in str(err)
    assert peak < 16 * MiB


def test_legacy_storage_larger_than_the_file_refused(tmp_path):
    """Legacy format: a 2 GiB storage declared in a file of a few hundred bytes is refused before allocating."""
    path = tmp_path / "legacy.pth"
    body = b"".join(_pickle(x) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True},
                                         {"w": _Tensor(_Storage("k0", 1 << 29))}, ["k0"]))
    path.write_bytes(body + (4).to_bytes(8, "little") + bytes(16))
    err, _, peak = _measure(lambda: read_checkpoint(path))
    assert isinstance(err, ArtifactError), err
    assert str(path) in str(err) and "storage k0" in str(err) and "more than the file's" in str(err)
    assert peak < 16 * MiB


@pytest.mark.parametrize("legacy", [False, True])
def test_genuine_small_checkpoint_still_reads(tmp_path, legacy):
    """The checks refuse nothing torch itself writes (stored records, any storage size)."""
    path = tmp_path / "ok.pth"
    state = {"a": torch.arange(3 * MiB // 4, dtype=torch.float32), "z": torch.zeros(5, dtype=torch.int64)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded = read_checkpoint(path).obj
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["z"], state["z"])


def test_recompressed_checkpoint_with_zero_buffers_still_reads(tmp_path):
    """A genuine checkpoint re-zipped with deflate (e.g. by an archiver) keeps within the expansion limit,
    even with an all-zero buffer of a few MB (zeros alone deflate ~1000×: the slack of 1 MiB covers small ones)."""
    src, path = tmp_path / "src.pth", tmp_path / "deflated.pth"
    torch.save({"w": torch.randn(200_000), "b": torch.zeros(1000)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    loaded = read_checkpoint(path).obj
    assert loaded["w"].shape == (200_000,) and not loaded["b"].any()
