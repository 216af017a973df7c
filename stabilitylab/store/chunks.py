"""Reads of a local store's chunks in the calling thread, for the codec chain the study
store writes: [transpose], bytes (little-endian), blosc, [crc32c].

zarr reads a selection by sending every chunk through its event loop and then through a
worker thread for blosc, and decompresses each chunk into a new buffer. For the
trajectory blocks of ``analyze``, where two pipelines each read a block and then compute
it, that cost more than the decoding itself: the default study's weights (381 MB decoded)
took about 0.5 s of CPU, 0.26 s of it in zarr's event-loop thread, and each read waited on
both hand-offs.
:class:`DirectReader` does the same steps in the thread that asks, into buffers it
reuses: the file read, the CRC-32C check, blosc's decompression (which releases the GIL)
and the copy out of the stored order. The values, the fill value of a chunk never
written, the bound on a chunk's declared decoded size (:class:`~.schema.BoundedStore`)
and the errors on a damaged chunk are those of reading through zarr. Any other store or
codec chain is read through zarr (:meth:`DirectReader.of` returns None).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import numpy as np


class DirectReader:
    """One array of a local store, read chunk by chunk in the calling thread."""

    def __init__(self, arr, root: Path, where: str, order: tuple | None, crc: bool):
        """Use :meth:`of`, which checks the codecs: ``order`` is the transpose codec's
        (None: no transpose), ``crc`` whether the chain ends in crc32c."""
        import google_crc32c
        from numcodecs import blosc

        meta = arr.metadata
        self._order, self._crc = order, crc
        self._crc32c, self._decompress = google_crc32c.value, blosc.decompress
        self.shape = tuple(meta.shape)
        self.chunks = tuple(meta.chunk_grid.chunk_shape)
        self.dtype = np.dtype(arr.dtype)
        self.fill_value = self.dtype.type(meta.fill_value)
        self._meta, self._dir, self._where, self._name = meta, root / arr.path, where, arr.path
        self._nbytes = int(np.prod(self.chunks, dtype=np.int64)) * self.dtype.itemsize
        stored = self.chunks if self._order is None else tuple(self.chunks[i] for i in self._order)
        self._stored = stored  # the decoded chunk's C-order shape
        self._back = None if self._order is None else tuple(np.argsort(self._order))
        self._local = threading.local()  # each thread's buffers, reused chunk after chunk

    @classmethod
    def of(cls, arr, url, where: str) -> DirectReader | None:
        """A reader of ``arr`` (opened from ``url``) when the store is a local directory and
        the array's codecs are those above on a regular chunk grid, else None (also where
        this zarr or numcodecs lacks a piece the reader uses: zarr then reads)."""
        try:
            return cls._of(arr, url, where)
        except (ImportError, AttributeError, TypeError):
            return None

    @classmethod
    def _of(cls, arr, url, where: str) -> DirectReader | None:
        import google_crc32c  # noqa: F401 - as zarr >= 3.1.4 checks CRC-32C (before: crc32c)
        from numcodecs import blosc  # noqa: F401
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, TransposeCodec
        from zarr.core.chunk_grids import RegularChunkGrid

        from stabilitylab.store.schema import local_path

        root = local_path(url)
        meta = getattr(arr, "metadata", None)
        if root is None or getattr(meta, "zarr_format", None) != 3 \
                or not isinstance(meta.chunk_grid, RegularChunkGrid):
            return None
        codecs = list(meta.codecs)
        order = None
        if codecs and isinstance(codecs[0], TransposeCodec):
            order = tuple(codecs.pop(0).order)
        crc = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        if crc:
            codecs.pop()
        dtype = np.dtype(arr.dtype)
        if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) \
                or not isinstance(codecs[1], BloscCodec) or dtype.kind not in "fiub":
            return None
        if dtype.itemsize > 1 and getattr(codecs[0].endian, "value", None) != "little":
            return None  # a big-endian store: zarr swaps the bytes
        meta.encode_chunk_key((0,) * len(meta.shape))  # this zarr names chunks as used below
        return cls(arr, Path(root), where, order, crc)

    def selection_shape(self, selection: tuple) -> tuple:
        """The shape of ``arr[selection]`` (see :meth:`read`)."""
        return tuple(b - a for a, b, kept in self._dims(selection) if kept)

    def _dims(self, selection: tuple) -> list[tuple[int, int, bool]]:
        """Per dimension of ``selection``: (first, stop, whether the result keeps it)."""
        if len(selection) > len(self.shape):
            raise IndexError(f"{len(selection)} indices for {len(self.shape)} dimensions")
        selection = tuple(selection) + (slice(None),) * (len(self.shape) - len(selection))
        dims = []
        for sel, n in zip(selection, self.shape):
            if isinstance(sel, slice):
                start, stop, step = sel.indices(n)
                if step != 1:
                    raise ValueError("DirectReader reads slices of step 1 only")
                dims.append((start, max(start, stop), True))
            else:
                i = int(sel)
                if not 0 <= i < n:
                    raise IndexError(f"index {i} out of range for a dimension of {n}")
                dims.append((i, i + 1, False))
        return dims

    def read(self, selection: tuple, out: np.ndarray | None = None) -> np.ndarray:
        """``arr[selection]`` (a tuple of one int or one slice of step 1 per dimension; the
        dimensions it leaves out are taken whole), written into ``out`` (an array of the
        result's shape; a view will do) or a new array. Call it inside
        :func:`~.schema.reading`: a damaged chunk then raises as zarr's read does there."""
        dims = self._dims(selection)
        shape = tuple(b - a for a, b, kept in dims if kept)
        if out is None:
            out = np.empty(shape, self.dtype)
        elif out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the selection {shape}")
        ranges = [range(a // c, -(-b // c)) if b > a else range(0)
                  for (a, b, _), c in zip(dims, self.chunks)]
        for coords in itertools.product(*ranges):
            inner, outer = [], []
            for (a, b, kept), c, i in zip(dims, self.chunks, coords):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                inner.append(slice(lo - i * c, hi - i * c) if kept else lo - i * c)
                if kept:
                    outer.append(slice(lo - a, hi - a))
            chunk = self._chunk(coords)
            out[tuple(outer)] = self.fill_value if chunk is None else chunk[tuple(inner)]
        return out

    def _chunk(self, coords: tuple) -> np.ndarray | None:
        """The decoded chunk at ``coords`` (a view of this thread's buffer, valid until its
        next chunk), or None where no chunk was written (the fill value)."""
        from stabilitylab.store.schema import check_declared_size, declared_size

        key = self._meta.encode_chunk_key(coords)
        local = self._local
        try:
            with open(self._dir / key, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size > 2 * self._nbytes + (1 << 16):  # blosc stores at most 16 bytes more
                    raise ValueError(f"chunk {key} holds {size} bytes, more than a blosc "
                                     f"stream of its {self._nbytes} bytes can")
                if getattr(local, "raw", None) is None or len(local.raw) < size:
                    local.raw = bytearray(max(size, self._nbytes + 4096))
                    local.decoded = np.empty(self._nbytes, np.uint8)
                view = memoryview(local.raw)[:size]
                got = 0
                while got < size:  # one read a regular file, unless it shrank meanwhile
                    n = f.readinto(view[got:])
                    if not n:
                        raise ValueError(f"chunk {key} changed while it was read")
                    got += n
        except FileNotFoundError:
            return None
        # As through zarr: the declared decoded size is bounded first (BoundedStore, on
        # the stream before its checksum), then the checksum is checked, then it decodes.
        body = view[:max(size - 4, 0)] if self._crc else view
        declared = declared_size("blosc", body)
        check_declared_size(self._where, self._name, "/".join(map(str, coords)), declared,
                            self._nbytes)
        if self._crc and (size < 4 or self._crc32c(np.frombuffer(body, np.uint8))
                          != int.from_bytes(view[size - 4:], "little")):
            raise ValueError(f"chunk {key}: stored and computed checksum do not match")
        if declared != self._nbytes:
            raise ValueError(f"chunk {key} decodes to {declared} bytes, not the "
                             f"{self._nbytes} of its shape")
        self._decompress(body, local.decoded)
        chunk = local.decoded.view(self.dtype).reshape(self._stored)
        return chunk if self._back is None else chunk.transpose(self._back)
