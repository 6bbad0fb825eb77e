"""AesGcmVault: authenticated encryption bound to its row, key rotation, fingerprints, and key
loading from the environment or a key file."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from core.errors import DecryptionError
from storage.crypto import AesGcmVault, KeyConfigError, load_vault

CARD = "6222020200112233445"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def vault(key: bytes) -> AesGcmVault:
    return AesGcmVault([key])


def test_a_value_round_trips_and_each_encryption_differs(vault: AesGcmVault) -> None:
    first = vault.encrypt(CARD, "card.number:1")
    second = vault.encrypt(CARD, "card.number:1")
    assert first != second  # a fresh nonce each time
    assert CARD.encode() not in first
    assert vault.decrypt(first, "card.number:1") == CARD
    assert (
        vault.decrypt(vault.encrypt("卡密 ＡＢＣ", "card.secret:1"), "card.secret:1")
        == "卡密 ＡＢＣ"
    )
    assert vault.decrypt(vault.encrypt("", "x"), "x") == ""


def test_the_blob_is_version_key_id_nonce_and_ciphertext(vault: AesGcmVault) -> None:
    blob = vault.encrypt("123", "ctx")
    assert blob[0] == 1
    assert blob[1:5].hex() == vault.primary_key_id
    assert len(blob) == 1 + 4 + 12 + len("123") + 16


def test_a_blob_moved_to_another_row_or_field_does_not_open(vault: AesGcmVault) -> None:
    blob = vault.encrypt(CARD, "card.number:1")
    for context in ("card.number:2", "card.secret:1", "card.number:1 ", ""):
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context)


def test_a_tampered_blob_does_not_open(vault: AesGcmVault) -> None:
    blob = vault.encrypt(CARD, "card.number:1")
    for index in (0, 1, 6, len(blob) - 20, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError):
            vault.decrypt(bytes(tampered), "card.number:1")
    with pytest.raises(DecryptionError):
        vault.decrypt(blob[:-1], "card.number:1")
    with pytest.raises(DecryptionError):
        vault.decrypt(b"", "card.number:1")


def test_a_blob_from_another_key_does_not_open(vault: AesGcmVault) -> None:
    stranger = AesGcmVault([os.urandom(32)])
    with pytest.raises(DecryptionError, match="unknown key"):
        vault.decrypt(stranger.encrypt(CARD, "c"), "c")


def test_after_rotation_old_blobs_open_and_rewrap_moves_them_to_the_new_key(key: bytes) -> None:
    old = AesGcmVault([key])
    old_blob = old.encrypt(CARD, "card.number:7")
    rotated = AesGcmVault([os.urandom(32), key])
    assert rotated.primary_key_id != old.primary_key_id
    assert rotated.decrypt(old_blob, "card.number:7") == CARD
    assert rotated.needs_rewrap(old_blob)
    new_blob = rotated.rewrap(old_blob, "card.number:7")
    assert not rotated.needs_rewrap(new_blob)
    assert new_blob[1:5].hex() == rotated.primary_key_id
    assert rotated.decrypt(new_blob, "card.number:7") == CARD
    with pytest.raises(DecryptionError):
        old.decrypt(new_blob, "card.number:7")
    with pytest.raises(DecryptionError):
        rotated.rewrap(old_blob, "card.number:8")


def test_fingerprints_are_stable_keyed_and_separated_by_kind(key: bytes) -> None:
    vault = AesGcmVault([key])
    fp = vault.fingerprint("card", CARD)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert AesGcmVault([key]).fingerprint("card", CARD) == fp
    assert vault.fingerprint("card", CARD + "0") != fp
    assert vault.fingerprint("bank_card", CARD) != fp
    # kind and value are delimited: shifting a character between them changes the MAC
    assert vault.fingerprint("ab", "c") != vault.fingerprint("a", "bc")
    assert AesGcmVault([os.urandom(32)]).fingerprint("card", CARD) != fp


def test_fingerprints_survive_data_key_rotation(key: bytes) -> None:
    before = AesGcmVault([key]).fingerprint("id_number", "11010519491231002X")
    after = AesGcmVault([os.urandom(32), key]).fingerprint("id_number", "11010519491231002X")
    assert after == before
    explicit = AesGcmVault([key], fingerprint_key=b"f" * 32)
    assert explicit.fingerprint("id_number", "11010519491231002X") != before


def test_keys_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(KeyConfigError):
        AesGcmVault([])
    with pytest.raises(KeyConfigError):
        AesGcmVault([b"short"])


# --------------------------------------------------------------------------------------------
# Loading keys


def test_the_environment_key_is_used_and_no_key_file_is_written(tmp_path: Path) -> None:
    key = os.urandom(32)
    key_file = tmp_path / "var" / "cardbot.key"
    vault = load_vault(b64(key), key_file)
    assert not key_file.exists()
    assert AesGcmVault([key]).decrypt(vault.encrypt("x", "c"), "c") == "x"
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert load_vault(urlsafe, key_file).primary_key_id == vault.primary_key_id


@pytest.mark.parametrize(
    "bad",
    ["not base64!", b64(bytes(range(16))), b64(bytes(range(33))), "   x  "],
    ids=["not-base64", "16-bytes", "33-bytes", "spaces"],
)
def test_a_malformed_environment_key_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(KeyConfigError, match="CARDBOT_DATA_KEY"):
        load_vault(bad, tmp_path / "k")


def test_old_keys_still_decrypt_after_rotation(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    blob = load_vault(b64(old), tmp_path / "k").encrypt(CARD, "c")
    fp = load_vault(b64(old), tmp_path / "k").fingerprint("card", CARD)
    rotated = load_vault(b64(new), tmp_path / "k", old_keys=f" {b64(old)} ,")
    assert rotated.decrypt(blob, "c") == CARD
    assert rotated.needs_rewrap(blob)
    assert rotated.fingerprint("card", CARD) == fp
    with pytest.raises(KeyConfigError, match="old data key"):
        load_vault(b64(new), tmp_path / "k", old_keys="nope")


def test_an_explicit_fingerprint_key_wins(tmp_path: Path) -> None:
    key, fingerprint_key = os.urandom(32), os.urandom(32)
    vault = load_vault(b64(key), tmp_path / "k", fingerprint_key=b64(fingerprint_key))
    expected = AesGcmVault([os.urandom(32)], fingerprint_key=fingerprint_key)
    assert vault.fingerprint("card", CARD) == expected.fingerprint("card", CARD)


def test_the_key_file_is_created_once_private_and_then_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "var" / "cardbot.key"
    with caplog.at_level(logging.WARNING, logger="storage.crypto"):
        first = load_vault(None, key_file)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "back it up" in warnings[0].getMessage()
    assert str(key_file) in warnings[0].getMessage()
    content = json.loads(key_file.read_text())
    assert len(content["keys"]) == 1 and "fingerprint_key" in content

    caplog.clear()
    blob = first.encrypt(CARD, "card.number:1")
    with caplog.at_level(logging.WARNING, logger="storage.crypto"):
        second = load_vault("", key_file)
    assert caplog.records == []
    assert second.decrypt(blob, "card.number:1") == CARD
    assert second.fingerprint("card", CARD) == first.fingerprint("card", CARD)
    assert json.loads(key_file.read_text()) == content


def test_a_rotated_key_file_lists_the_primary_first(tmp_path: Path) -> None:
    key_file = tmp_path / "cardbot.key"
    old = load_vault(None, key_file)
    blob = old.encrypt(CARD, "c")
    content = json.loads(key_file.read_text())
    content["keys"].insert(0, b64(os.urandom(32)))
    key_file.write_text(json.dumps(content))
    rotated = load_vault(None, key_file)
    assert rotated.primary_key_id != old.primary_key_id
    assert rotated.decrypt(rotated.rewrap(blob, "c"), "c") == CARD
    assert rotated.fingerprint("card", CARD) == old.fingerprint("card", CARD)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"keys": []}', '{"keys": ["short"]}', '{"keys": [1]}'],
)
def test_a_malformed_key_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "cardbot.key"
    key_file.write_text(content)
    key_file.chmod(0o600)
    with pytest.raises(KeyConfigError, match=r"key file|in .*cardbot\.key"):
        load_vault(None, key_file)


def test_a_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "cardbot.key"
    load_vault(None, key_file)
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="storage.crypto"):
        load_vault(None, key_file)
    assert any("0600" in r.getMessage() for r in caplog.records)
