"""The master secret: created on first use, file mode 0600, or taken from the environment."""

from __future__ import annotations

import binascii
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.config import MASTER_SECRET_ENV, data_dir
from distillguard.errors import SecretError

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_FILE",
    "MasterSecret",
    "init_master_secret",
    "load_master_secret",
]

SECRET_FILE = "master.key"  # noqa: S105 - a file name
SECRET_BYTES = 32
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class MasterSecret:
    """The root of every tenant key. `source` says where it came from; the bytes never print."""

    material: bytes = field(repr=False)
    source: str


def _decode(text: str, origin: str) -> bytes:
    try:
        material = bytes.fromhex(text.strip())
    except ValueError:
        raise SecretError(f"{origin} must be hex-encoded") from None
    if len(material) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{origin} holds {len(material) * 8} bits; at least {MIN_SECRET_BYTES * 8} are required"
        )
    return material


def init_master_secret(directory: Path | None = None) -> tuple[MasterSecret, bool]:
    """Load the master secret, creating it if there is none. Returns (secret, created)."""
    if os.environ.get(MASTER_SECRET_ENV):
        return load_master_secret(directory), False
    path = data_dir(directory) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    material = secrets.token_bytes(SECRET_BYTES)
    try:
        # O_EXCL: never overwrite an existing secret, even if two processes race here.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_master_secret(directory), False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(binascii.hexlify(material).decode() + "\n")
    return MasterSecret(material, str(path)), True


def load_master_secret(directory: Path | None = None) -> MasterSecret:
    """Read the master secret from the environment or the data directory; never invent one."""
    from_env = os.environ.get(MASTER_SECRET_ENV)
    if from_env:
        return MasterSecret(_decode(from_env, MASTER_SECRET_ENV), f"${MASTER_SECRET_ENV}")
    path = data_dir(directory) / SECRET_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecretError(
            f"no master secret at {path}: run `distillguard keys init` or set {MASTER_SECRET_ENV}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
        )
    return MasterSecret(_decode(path.read_text(), str(path)), str(path))
