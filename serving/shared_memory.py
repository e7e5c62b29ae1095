"""System shared memory regions (Triton's shared memory extension): register, read inputs, write outputs.

A region is a POSIX shared memory object, named by its key as the client gives it to shm_open
("/input_data" is /dev/shm/input_data), and a window (offset, byte_size) into it. The node maps
the whole object once at register and unmaps it at unregister. A client owns the file and may
shrink it at any time: every access checks the file's size first, as touching a mapping past the
end of its file is a SIGBUS, not an exception. Inputs are copied out at read time, so a region
unregistered while its request runs cannot pull memory from under the model.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonflow.serving.codec import Region, serialize_bytes
from tritonflow.serving.datatypes import NUMPY
from tritonflow.serving.errors import (
    BadRegion,
    CudaSharedMemoryUnavailable,
    MalformedRequest,
    RegionExists,
    UnknownRegion,
)

SHM_ROOT = Path("/dev/shm")  # NOTE: where glibc's shm_open puts objects on Linux, as Triton opens them


@dataclass(slots=True)
class _Mapped:
    key: str
    offset: int  # of the registered window, in the file
    byte_size: int
    fd: int
    mapping: mmap.mmap


class SharedMemory:
    """The node's registered system shared memory regions, by name (one set for HTTP and gRPC)."""

    def __init__(self) -> None:
        self._regions: dict[str, _Mapped] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Maps the key's object; the window must lie inside it (Triton's texts, which clients match)."""
        if name in self._regions:
            raise RegionExists(name)
        if offset < 0 or byte_size <= 0:
            raise BadRegion(
                f"Invalid shared memory region: {key!r}: offset {offset} and byte_size {byte_size}: "
                "expected offset >= 0 and byte_size > 0"
            )
        fd = _open(key)
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise BadRegion(
                    f"Invalid shared memory region: {key!r}: offset {offset} + byte_size {byte_size} is "
                    f"past the end of its {size} bytes: register a window inside it"
                )
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Mapped(key, offset, byte_size, fd, mapping)

    def unregister(self, name: str | None) -> None:
        """One region (an unknown name is no error, as in Triton), or every region (None)."""
        for region in [name] if name is not None else list(self._regions):
            mapped = self._regions.pop(region, None)
            if mapped is not None:
                mapped.mapping.close()
                os.close(mapped.fd)

    def status(self, name: str | None) -> list[dict[str, Any]]:
        """Triton's status entries: one region (UnknownRegion if it is not registered) or all."""
        names = [name] if name is not None else sorted(self._regions)
        entries = []
        for region in names:
            mapped = self._get(region, "system")
            entries.append(
                {"name": region, "key": mapped.key, "offset": mapped.offset, "byte_size": mapped.byte_size}
            )
        return entries

    def read(self, region: Region, datatype: str, shape: list[int]) -> np.ndarray:
        """An input tensor, copied out of the region: its byte size must be exactly the shape's."""
        dtype = NUMPY.get(datatype)
        if dtype is None:
            raise MalformedRequest(
                f"datatype {datatype!r} cannot be read from shared memory region {region.name!r}"
            )
        count = math.prod(shape)
        if region.byte_size != count * dtype.itemsize:
            raise BadRegion(
                f"shared_memory_byte_size is {region.byte_size} in region {region.name!r}, but shape {shape} "
                f"of {datatype} takes {count * dtype.itemsize} bytes"
            )
        start = self._window(region)
        # NOTE: one copy, by slicing: the request outlives an unregister or a client rewriting the region,
        # and no view of the mapping is left to stop unregister from closing it
        raw = self._regions[region.name].mapping[start : start + region.byte_size]
        return np.frombuffer(raw, dtype, count).reshape(shape)

    def write(self, region: Region, array: np.ndarray) -> None:
        """An output tensor into the region, which must hold it (it may be larger)."""
        # NOTE: BYTES outputs (classification) as Triton's wire lays them out; numbers as their raw bytes
        raw = memoryview(serialize_bytes(array)) if array.dtype == object else _raw(array)
        if raw.nbytes > region.byte_size:
            raise BadRegion(
                f"output of {raw.nbytes} bytes does not fit shared_memory_byte_size {region.byte_size} of "
                f"region {region.name!r}: give a region of at least {raw.nbytes} bytes"
            )
        start = self._window(region)
        self._regions[region.name].mapping[start : start + raw.nbytes] = raw

    def check(self, region: Region) -> None:
        """Raises unless the window is inside a registered region (asked before the model runs)."""
        self._window(region)

    def _get(self, name: str, kind: str = "") -> _Mapped:
        mapped = self._regions.get(name)
        if mapped is None:
            raise UnknownRegion(name, kind)
        return mapped

    def _window(self, region: Region) -> int:
        """The request's window's start in the file, once it is inside the region and the file."""
        mapped = self._get(region.name)
        if region.offset < 0 or region.byte_size < 0 or region.offset + region.byte_size > mapped.byte_size:
            raise BadRegion(
                f"Invalid offset + byte size for shared memory region: {region.name!r}: "
                f"shared_memory_offset {region.offset} + shared_memory_byte_size {region.byte_size} "
                f"is past its {mapped.byte_size} bytes"
            )
        start = mapped.offset + region.offset
        # NOTE: the client may have shrunk the file since: the mapping past its end would SIGBUS the node
        size = os.fstat(mapped.fd).st_size
        if start + region.byte_size > min(size, len(mapped.mapping)):
            raise BadRegion(
                f"region {region.name!r}: its file {mapped.key!r} is now {size} bytes, too small for "
                f"{region.byte_size} bytes at offset {start}: register it again"
            )
        return start

    @staticmethod
    def cuda_status(name: str | None) -> list[dict[str, Any]]:
        """A node without GPUs has no CUDA region (Triton without GPUs answers the same)."""
        if name is not None:
            raise UnknownRegion(name, "cuda")
        return []

    @staticmethod
    def cuda_register(name: str) -> None:
        raise CudaSharedMemoryUnavailable(name)


def _raw(array: np.ndarray) -> memoryview:
    """A numeric array's bytes, copied only when it is not contiguous already."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _open(key: str) -> int:
    """The shared memory object of a key: a plain name in /dev/shm, never a path elsewhere."""
    plain = key.removeprefix("/")
    # NOTE: printable: os.open raises ValueError on a NUL or a lone surrogate (JSON can hold one)
    if not plain or "/" in plain or not plain.isprintable() or plain in (".", ".."):
        raise BadRegion(
            f"shared memory key {key!r} is not a POSIX shared memory name: expected '/name' (one printable "
            "name, no other slash), as given to shm_open"
        )
    try:
        # NOTE: O_NOFOLLOW: a symlink in /dev/shm must not open a file elsewhere
        fd = os.open(SHM_ROOT / plain, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        raise BadRegion(
            f"Unable to open shared memory region: {key!r}: create it first (shm_open / "
            "create_shared_memory_region)"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRegion(f"Unable to open shared memory region: {key!r}: it is not a shared memory object")
    return fd
