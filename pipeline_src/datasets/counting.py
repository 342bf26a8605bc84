"""A Zarr store that counts the bytes it reads, per key: how `make bench-loader` and the tests
see what a rank really takes from disk (compressed bytes, shard indexes included)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from zarr.storage import LocalStore, WrapperStore


class CountingStore(WrapperStore):
    """A read-only local Zarr store whose `read_bytes` counts the bytes fetched per key
    (`fields/c/<time shard>/<channel>/0/0` for an assembled split)."""

    def __init__(self, store: str | Path | LocalStore, counts: Counter | None = None):
        if not isinstance(store, LocalStore):
            store = LocalStore(str(store), read_only=True)
        super().__init__(store)
        self.read_bytes = Counter() if counts is None else counts

    def _with_store(self, store):  # zarr re-wraps stores (read-only views): keep one counter
        return type(self)(store, self.read_bytes)

    async def get(self, key, prototype, byte_range=None):
        """Read as the wrapped store does, counting the bytes under the key's array name."""
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None:
            self.read_bytes[key] += len(buf)
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        """Read several ranges as the wrapped store does, counting their bytes."""
        key_ranges = list(key_ranges)
        out = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, out):
            if buf is not None:
                self.read_bytes[key] += len(buf)
        return out


def bytes_by_channel(counts: Counter, array: str, channel_axis: int) -> dict[int, int]:
    """Bytes read of one array's chunk/shard keys, per index along its channel axis."""
    out: dict[int, int] = {}
    for key, n in counts.items():
        parts = key.split("/")
        if parts[0] == array and len(parts) > 2 and parts[1] == "c":
            channel = int(parts[2 + channel_axis])
            out[channel] = out.get(channel, 0) + n
    return out
