"""The secret a watermark is keyed with, as the watermark core sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from distillguard.errors import SchemeError

__all__ = ["MIN_KEY_BYTES", "WatermarkKey"]

MIN_KEY_BYTES = 16  # 128 bits


@dataclass(frozen=True)
class WatermarkKey:
    """A tenant's watermark key: a public id and at least 128 bits of secret material.

    The secret never appears in `repr` or `str`, so a key that ends up in a log leaks nothing.
    """

    key_id: str
    secret: bytes = field(repr=False)
    tenant: str | None = None

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise SchemeError(
                f"a watermark key needs at least {MIN_KEY_BYTES * 8} bits, "
                f"got {len(self.secret) * 8}"
            )

    @cached_property
    def words(self) -> tuple[int, int, int, int]:
        """The four little-endian 32-bit words of the first 16 bytes: k0..k3 of the hash."""
        k0, k1, k2, k3 = (
            int.from_bytes(self.secret[offset : offset + 4], "little") for offset in (0, 4, 8, 12)
        )
        return k0, k1, k2, k3


def key_word_array(keys: list[WatermarkKey] | tuple[WatermarkKey, ...]) -> npt.NDArray[np.uint32]:
    """Key words stacked as a (K, 4) uint32 array."""
    return np.array([key.words for key in keys], dtype=np.uint32).reshape(len(keys), 4)
