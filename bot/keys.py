"""``cardbot keys``: data-key rotation for operators.

With the key file (the default):

1. ``cardbot keys rotate`` — adds a new primary key to the key file (older keys stay, to open
   what they sealed) and re-encrypts every sealed value under it;
2. restart the running bots, so they seal new values with the new key;
3. ``cardbot keys prune`` — re-encrypts anything sealed meanwhile, checks that every sealed
   value opens with the primary key alone, and only then removes the old keys from the file.

With ``CARDBOT_DATA_KEY``: put the new key in ``CARDBOT_DATA_KEY`` and the old one in
``CARDBOT_DATA_KEYS_OLD``, run ``cardbot keys rotate``, then remove ``CARDBOT_DATA_KEYS_OLD``
once ``cardbot keys status`` shows nothing left on it. Fingerprints need a key that outlives
the rotation: set ``CARDBOT_FINGERPRINT_KEY`` (``cardbot keys fingerprint-key`` prints the one
in use) before the old key is removed — rotate refuses otherwise.

``cardbot keys status`` opens every sealed value and says which key each needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bot.settings import Settings
from storage.crypto import (
    AesGcmVault,
    KeyConfigError,
    add_key_to_file,
    drop_old_keys_from_file,
    load_vault,
)
from storage.db import SqlAlchemyUnitOfWorkFactory, is_sqlite
from storage.migrate import upgrade_async
from storage.rekey import SealedCensus, census


def vault_for(settings: Settings, *, create: bool = True) -> AesGcmVault:
    """The configured vault; ``create=False``: never make a new key file (see load_vault)."""
    return load_vault(
        settings.data_key.get_secret_value() if settings.data_key else None,
        settings.resolved_key_file,
        settings.data_keys_old.get_secret_value() if settings.data_keys_old else None,
        settings.fingerprint_key.get_secret_value() if settings.fingerprint_key else None,
        create=create,
    )


def migration_vault(settings: Settings) -> Callable[[], AesGcmVault]:
    """What an operator command hands to migrations: the bots' existing key, loaded only when
    a revision has data to seal (storage.migrate)."""
    return lambda: vault_for(settings, create=False)


def _uses_key_file(settings: Settings) -> bool:
    return not (settings.data_key and settings.data_key.get_secret_value().strip())


async def storage_for(settings: Settings) -> SqlAlchemyUnitOfWorkFactory:
    url = settings.resolved_database_url
    if is_sqlite(url):
        await upgrade_async(url, vault=migration_vault(settings))
    return SqlAlchemyUnitOfWorkFactory.from_url(url)


def _print(title: str, result: SealedCensus, vault: AesGcmVault) -> None:
    print(f"{title}: {result.total} sealed values")
    for key, count in sorted(result.by_key.items()):
        role = (
            "primary"
            if key == vault.primary_key_id
            else ("older key" if key in vault.key_ids else "UNKNOWN key")
        )
        print(f"  key {key} ({role}): {count}")
    for where, count in sorted(result.rewrapped.items()):
        print(f"  re-encrypted {where}: {count}")
    if result.broken:
        print(f"  {len(result.broken)} do NOT open, first: {', '.join(result.broken[:5])}")


async def status(settings: Settings) -> int:
    """Exit 0 when every sealed value opens; 1 otherwise."""
    try:
        vault = vault_for(settings)
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    factory = await storage_for(settings)
    try:
        result = await census(factory, vault)
    finally:
        await factory.dispose()
    _print("status", result, vault)
    return 1 if result.broken else 0


async def rotate(settings: Settings) -> int:
    """New primary key (key file) and every sealed value re-encrypted under it."""
    try:
        vault = vault_for(settings)
        if _uses_key_file(settings):
            new_id = add_key_to_file(settings.resolved_key_file)
            print(f"added key {new_id} to {settings.resolved_key_file} as the primary key")
            vault = vault_for(settings)
        elif vault.fingerprint_key_derived and len(vault.key_ids) > 1:
            print(
                "cardbot: fingerprints are derived from your oldest data key and would change "
                "once it is removed. Pin them first: set CARDBOT_FINGERPRINT_KEY to the value "
                "`cardbot keys fingerprint-key` prints (with the old key still configured), "
                "then rotate again.",
                file=sys.stderr,
            )
            return 2
        elif len(vault.key_ids) == 1:
            print(
                "note: only CARDBOT_DATA_KEY is configured; to rotate, set the new key as "
                "CARDBOT_DATA_KEY and the current one in CARDBOT_DATA_KEYS_OLD, then run this."
            )
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    factory = await storage_for(settings)
    try:
        done = await census(factory, vault, rewrap=True)
        check = await census(factory, vault)
    finally:
        await factory.dispose()
    _print("re-encrypted", done, vault)
    _print("check", check, vault)
    if check.broken:
        return 1
    if _uses_key_file(settings):
        print(
            "next: restart the running bots so they seal with the new key, then run "
            "`cardbot keys prune` to remove the old keys"
        )
    else:
        print("next: remove CARDBOT_DATA_KEYS_OLD once `cardbot keys status` shows 0 on it")
    return 0


async def prune(settings: Settings) -> int:
    """Re-encrypt stragglers, prove everything opens with the primary alone, drop old keys."""
    if not _uses_key_file(settings):
        print(
            "cardbot: keys come from CARDBOT_DATA_KEY: remove CARDBOT_DATA_KEYS_OLD yourself "
            "once `cardbot keys status` shows nothing on the old keys",
            file=sys.stderr,
        )
        return 2
    try:
        vault = vault_for(settings)
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    if len(vault.key_ids) == 1:
        print("the key file holds only the primary key: nothing to prune")
        return 0
    factory = await storage_for(settings)
    try:
        await census(factory, vault, rewrap=True)
        check = await census(factory, vault)
        if check.broken or check.on_old_keys:
            _print("check", check, vault)
            print(
                "cardbot: some sealed values still need other keys; nothing removed",
                file=sys.stderr,
            )
            return 1
        dropped = drop_old_keys_from_file(settings.resolved_key_file)
        alone = vault_for(settings)
        final = await census(factory, alone)
    finally:
        await factory.dispose()
    _print(f"removed {dropped} old key(s); with the primary key alone", final, alone)
    return 1 if final.broken else 0


def fingerprint_key(settings: Settings) -> int:
    """Print the fingerprint key in use (base64): an operator secret, for pinning it."""
    try:
        vault = vault_for(settings)
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    print(vault.export_fingerprint_key())
    return 0
