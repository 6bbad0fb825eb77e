"""Secrets at rest: ``AesGcmVault`` implements ``core.ports.Vault`` with AES-256-GCM.

Blob layout (all fixed size except the ciphertext)::

    version (1 byte, 0x01) | key id (4 bytes) | nonce (12 random bytes) | ciphertext + GCM tag

The associated data is the 5-byte header followed by the UTF-8 ``context`` (e.g.
``card.number:42``), so a blob copied to another row or field, or with an edited header, does
not open. The key id is derived from the key itself, so any configured key can be found without
trying them all; the primary key encrypts, every key decrypts (rotation), and ``rewrap``
re-encrypts an old blob under the primary.

Fingerprints are HMAC-SHA256 under a separate key, over ``kind`` and the value, so equal card
numbers can be found without plaintext and a card number never matches a phone number. The
fingerprint key must outlive data-key rotation (fingerprints are stored): it is either given
explicitly, kept in the key file, or derived with HKDF from the *oldest* configured data key.

Keys come from ``CARDBOT_DATA_KEY`` (base64 of 32 bytes) or a JSON key file (mode 0600) that is
created with a random key on first run — see ``load_vault``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import DecryptionError

log = logging.getLogger(__name__)

BLOB_VERSION = 1
KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
HEADER_BYTES = 1 + KEY_ID_BYTES
MIN_BLOB_BYTES = HEADER_BYTES + NONCE_BYTES + 16  # + GCM tag
KEY_FILE_VERSION = 1


class KeyConfigError(ValueError):
    """The configured key material is missing or malformed (a startup error, not a data one)."""


def key_id(key: bytes) -> bytes:
    """A short public name for a key, derived from it (one-way), stored in each blob."""
    return hashlib.sha256(b"cardbot.vault.key-id\x00" + key).digest()[:KEY_ID_BYTES]


def derive_fingerprint_key(data_key: bytes) -> bytes:
    """The fingerprint key HKDF derives from a data key when none is configured."""
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"cardbot.vault.fingerprint"
    ).derive(data_key)


class AesGcmVault:
    """AES-256-GCM with the context as associated data; several keys for rotation."""

    def __init__(self, keys: Sequence[bytes], fingerprint_key: bytes | None = None) -> None:
        """``keys``: the primary key first, then older keys still able to decrypt (newest
        first). ``fingerprint_key``: defaults to one derived from the oldest key (the last)."""
        if not keys:
            raise KeyConfigError("the vault needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise KeyConfigError(f"a data key must be {KEY_BYTES} bytes, got {len(key)}")
        self._primary_id = key_id(keys[0])
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self._ciphers.setdefault(key_id(key), AESGCM(key))
        # Derived from the oldest key: it changes if that key is ever removed (see rotation).
        self.fingerprint_key_derived = fingerprint_key is None
        if fingerprint_key is None:
            fingerprint_key = derive_fingerprint_key(keys[-1])
        elif len(fingerprint_key) < KEY_BYTES:
            raise KeyConfigError(f"the fingerprint key must be at least {KEY_BYTES} bytes")
        self._fingerprint_key = fingerprint_key

    def with_primary(self, primary_key_id: str) -> AesGcmVault:
        """The same keys and fingerprint key, sealing under ``primary_key_id`` (hex), which
        must be one of them: a process seals with the key its key generation names
        (``storage.keyring``), whatever order its own configuration lists the keys in."""
        wanted = bytes.fromhex(primary_key_id)
        if wanted not in self._ciphers:
            raise KeyConfigError(f"key {primary_key_id} is not among this vault's keys")
        twin = copy.copy(self)
        twin._primary_id = wanted
        return twin

    def same_fingerprints(self, other: AesGcmVault) -> bool:
        """Whether ``other`` computes the same fingerprints (a reloaded key file must not
        change them under a running process)."""
        return hmac.compare_digest(self._fingerprint_key, other._fingerprint_key)

    @property
    def primary_key_id(self) -> str:
        """Hex id of the key new blobs are encrypted with."""
        return self._primary_id.hex()

    def encrypt(self, plaintext: str, context: str) -> bytes:
        """AEAD-encrypt under the primary key; ``context`` is bound as associated data."""
        header = bytes([BLOB_VERSION]) + self._primary_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._primary_id].encrypt(
            nonce, plaintext.encode("utf-8"), header + context.encode("utf-8")
        )
        return header + nonce + sealed

    def decrypt(self, blob: bytes, context: str) -> str:
        """Open a blob made by encrypt with the same context; raises DecryptionError."""
        header, nonce, sealed = self._split(blob)
        cipher = self._ciphers.get(header[1:])
        if cipher is None:
            raise DecryptionError(f"blob was encrypted with an unknown key {header[1:].hex()}")
        try:
            plaintext = cipher.decrypt(nonce, sealed, header + context.encode("utf-8"))
        except InvalidTag:
            raise DecryptionError(
                f"blob does not open for context {context!r} (tampered or moved)"
            ) from None
        return plaintext.decode("utf-8")

    @staticmethod
    def key_of(blob: bytes) -> str:
        """Hex id of the key a blob was sealed with (as ``primary_key_id``)."""
        return bytes(blob[1:HEADER_BYTES]).hex()

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether the blob is under a key other than the primary."""
        header, _, _ = self._split(blob)
        return header[1:] != self._primary_id

    def rewrap(self, blob: bytes, context: str) -> bytes:
        """Re-encrypt a blob under the primary key (after rotation), same context."""
        return self.encrypt(self.decrypt(blob, context), context)

    @property
    def key_ids(self) -> list[str]:
        """Hex ids of every key that can open blobs, the primary first."""
        return [k.hex() for k in self._ciphers]

    def export_fingerprint_key(self) -> str:
        """The fingerprint key, base64 — for an operator pinning it before a rotation."""
        return _encode_key(self._fingerprint_key)

    def fingerprint(self, kind: str, value: str) -> str:
        """Keyed HMAC-SHA256 (hex) of ``kind`` and an already normalised value."""
        message = kind.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).hexdigest()

    @staticmethod
    def _split(blob: bytes) -> tuple[bytes, bytes, bytes]:
        if len(blob) < MIN_BLOB_BYTES:
            raise DecryptionError("blob is too short to be a vault ciphertext")
        if blob[0] != BLOB_VERSION:
            raise DecryptionError(f"unknown blob version {blob[0]}")
        return (
            blob[:HEADER_BYTES],
            blob[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES],
            blob[HEADER_BYTES + NONCE_BYTES :],
        )


# --------------------------------------------------------------------------------------------
# Key loading


def _decode_key(value: str, what: str, *, exact: bool = True) -> bytes:
    text = value.strip()
    # Accept the URL-safe alphabet too; padding may be left off.
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{what} is not valid base64") from None
    if (exact and len(key) != KEY_BYTES) or len(key) < KEY_BYTES:
        raise KeyConfigError(
            f"{what} must be base64 of {KEY_BYTES} random bytes, got {len(key)} bytes "
            '(make one with: python -c "import base64,os;print(base64.b64encode('
            'os.urandom(32)).decode())")'
        )
    return key


def _encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _split_keys(value: str | None, what: str) -> list[bytes]:
    if not value:
        return []
    return [_decode_key(part, what) for part in value.split(",") if part.strip()]


def _create_key_file(key_file: Path) -> bool:
    """Write a new key file with a random data key and fingerprint key; False if another
    process created it first."""
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    content = {
        "version": KEY_FILE_VERSION,
        "keys": [_encode_key(secrets.token_bytes(KEY_BYTES))],
        "fingerprint_key": _encode_key(secrets.token_bytes(KEY_BYTES)),
    }
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            key_file.unlink()
        raise
    return True


def _read_key_file(key_file: Path) -> tuple[list[bytes], bytes | None]:
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "key file %s is readable by other users (mode %o); it should be 0600",
            key_file,
            mode,
        )
    try:
        content = json.loads(key_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyConfigError(f"key file {key_file} is not readable JSON: {exc}") from None
    keys = content.get("keys") if isinstance(content, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise KeyConfigError(f'key file {key_file} needs "keys": a list of base64 keys')
    data_keys = [_decode_key(k, f"a key in {key_file}") for k in keys]
    fingerprint = content.get("fingerprint_key")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise KeyConfigError(f'"fingerprint_key" in {key_file} must be a base64 string')
    fingerprint_key = (
        None
        if fingerprint is None
        else _decode_key(fingerprint, f"the fingerprint key in {key_file}", exact=False)
    )
    return data_keys, fingerprint_key


def load_vault(
    data_key: str | None,
    key_file: Path,
    old_keys: str | None = None,
    fingerprint_key: str | None = None,
    *,
    create: bool = True,
) -> AesGcmVault:
    """The vault from configuration.

    ``data_key`` (``CARDBOT_DATA_KEY``): base64 of 32 bytes, the primary key; when given, the
    key file is not used. Otherwise ``key_file`` (JSON: ``{"keys": [primary, older...],
    "fingerprint_key": ...}``, mode 0600) is read, and created with random keys on first run.
    ``old_keys``: comma-separated base64 keys that may still decrypt, newest first.
    ``fingerprint_key``: base64; overrides the key file's and the derived one.
    ``create=False``: a missing key file is a KeyConfigError, never replaced by a new key (for
    operator commands that must use the bots' key, such as sealing data in a migration).
    Raises KeyConfigError on malformed keys.
    """
    file_fingerprint_key: bytes | None = None
    if data_key is not None and data_key.strip():
        keys = [_decode_key(data_key, "CARDBOT_DATA_KEY")]
    else:
        if not create and not key_file.exists():
            raise KeyConfigError(
                f"no data key: {key_file} does not exist; set CARDBOT_DATA_KEY or"
                " CARDBOT_DATA_KEY_FILE to the key the bots use"
            )
        if create and _create_key_file(key_file):
            log.warning(
                "created a new data key file at %s: back it up and keep it outside the "
                "database (without it the encrypted card numbers, secrets and ID numbers cannot "
                "be read), or set CARDBOT_DATA_KEY",
                key_file.resolve(),
            )
        keys, file_fingerprint_key = _read_key_file(key_file)
    keys += [key for key in _split_keys(old_keys, "an old data key") if key not in keys]
    explicit = (
        _decode_key(fingerprint_key, "the fingerprint key", exact=False)
        if fingerprint_key
        else None
    )
    return AesGcmVault(keys, fingerprint_key=explicit or file_fingerprint_key)


# --------------------------------------------------------------------------------------------
# Rotating the key file


def _write_key_file(key_file: Path, content: dict[str, object]) -> None:
    """Replace the key file atomically (0600, fsynced): a crash leaves the old or the new."""
    temp = key_file.with_name(f".{key_file.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, key_file)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def add_key_to_file(key_file: Path) -> str:
    """Put a new random primary key in front of the key file's keys (the older ones stay, to
    open what they sealed); pins the fingerprint key in the file if it was derived. Returns
    the new key's id (hex)."""
    keys, fingerprint = _read_key_file(key_file)
    if fingerprint is None:
        fingerprint = derive_fingerprint_key(keys[-1])
    new = secrets.token_bytes(KEY_BYTES)
    _write_key_file(
        key_file,
        {
            "version": KEY_FILE_VERSION,
            "keys": [_encode_key(k) for k in [new, *keys]],
            "fingerprint_key": _encode_key(fingerprint),
        },
    )
    return key_id(new).hex()


def drop_old_keys_from_file(key_file: Path) -> int:
    """Keep only the primary key in the key file; returns how many keys were dropped. Call it
    only after every sealed value has been rewrapped (``cardbot keys rotate`` checks)."""
    keys, fingerprint = _read_key_file(key_file)
    if fingerprint is None:
        fingerprint = derive_fingerprint_key(keys[-1])
    _write_key_file(
        key_file,
        {
            "version": KEY_FILE_VERSION,
            "keys": [_encode_key(keys[0])],
            "fingerprint_key": _encode_key(fingerprint),
        },
    )
    return len(keys) - 1
