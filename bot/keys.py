"""``cardbot keys``: data-key rotation for operators, coordinated with the running bots.

Every running process registers the key generation it seals with (``storage.keyring``), so
these commands know what the bots hold. With the key file (the default):

1. ``cardbot keys rotate`` — adds a new primary key to the key file (older keys stay, to open
   what they sealed) and announces it; the running bots re-read the key file within
   ``REFRESH_SECONDS`` and seal with the new key. Once every running process has it, every
   sealed value is re-encrypted under it. If some process has not picked it up within
   ``--wait`` seconds, nothing is re-encrypted yet (every process can still open everything)
   and the command names the processes;
2. ``cardbot keys prune`` — refused while any running process still holds an older generation;
   otherwise re-encrypts anything sealed meanwhile, checks that every sealed value opens with
   the primary key alone, and only then removes the old keys from the file.

With ``CARDBOT_DATA_KEY``: put the new key in ``CARDBOT_DATA_KEY`` and the old one in
``CARDBOT_DATA_KEYS_OLD``, run ``cardbot keys rotate`` (it announces the new key), restart the
bots with the same settings (a process cannot re-read its environment; ``rotate`` waits for them
and can be run again), then remove ``CARDBOT_DATA_KEYS_OLD`` once ``cardbot keys status`` shows
nothing left on it. Fingerprints need a key that outlives the rotation: set
``CARDBOT_FINGERPRINT_KEY`` (``cardbot keys fingerprint-key`` prints the one in use) before the
old key is removed — rotate refuses otherwise.

``cardbot keys status`` opens every sealed value and says which key each needs, and which
processes hold which generation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime

from bot.settings import Settings
from storage.crypto import (
    AesGcmVault,
    KeyConfigError,
    add_key_to_file,
    drop_old_keys_from_file,
    load_vault,
)
from storage.db import SqlAlchemyUnitOfWorkFactory, is_sqlite, probe_database
from storage.keyring import (
    REFRESH_SECONDS,
    KeyHolder,
    announce,
    behind,
    current_generation,
    holders,
    wait_for_holders,
)
from storage.migrate import upgrade_async
from storage.rekey import SealedCensus, census

DEFAULT_WAIT_SECONDS = 3 * REFRESH_SECONDS + 5
Now = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    """Storage for a one-off command: the database must exist already (a mistyped path is an
    error, not a new empty database); the embedded one migrates itself as the app does.
    Raises storage.db.DatabaseUnavailable with a one-line message."""
    url = settings.resolved_database_url
    await probe_database(url, must_exist=True)
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
    factory = await storage_for(settings)
    try:
        vault = vault_for(settings)
    except KeyConfigError as exc:
        await factory.dispose()
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    try:
        result = await census(factory, vault)
        marker = await current_generation(factory.engine)
        registered = await holders(factory.engine)
    finally:
        await factory.dispose()
    _print("status", result, vault)
    now = _utc_now()
    if marker is not None:
        print(f"key generation {marker.generation}: sealing with key {marker.primary_key_id}")
        if marker.primary_key_id != vault.primary_key_id:
            print(f"  note: the configured primary key is {vault.primary_key_id}")
    for holder in registered:
        state = "running" if holder.live(now) else "silent (not counted)"
        print(f"  process {holder.describe(now)} — {state}")
    return 1 if result.broken else 0


def _print_late(late: list[KeyHolder], now: datetime) -> None:
    for holder in late:
        print(f"  still on an older generation: {holder.describe(now)}", file=sys.stderr)


async def rotate(
    settings: Settings, wait_seconds: float = DEFAULT_WAIT_SECONDS, now: Now = _utc_now
) -> int:
    """New primary key (key file), announced to the running processes; every sealed value
    re-encrypted under it once they all have it. Exit 0 when done, 1 when values do not open
    or some process has not picked up the key (nothing re-encrypted then), 2 on bad keys."""
    factory = await storage_for(settings)  # a missing database stops it before any key changes
    try:
        return await _rotate(settings, factory, wait_seconds, now)
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    finally:
        await factory.dispose()


async def _rotate(
    settings: Settings, factory: SqlAlchemyUnitOfWorkFactory, wait_seconds: float, now: Now
) -> int:
    vault = vault_for(settings)
    if _uses_key_file(settings):
        new_id = add_key_to_file(settings.resolved_key_file)
        print(f"added key {new_id} to {settings.resolved_key_file} as the primary key")
        vault = vault_for(settings)
    elif vault.fingerprint_key_derived and len(vault.key_ids) > 1:
        print(
            "cardbot: fingerprints are derived from your oldest data key and would change once "
            "it is removed. Pin them first: set CARDBOT_FINGERPRINT_KEY to the value "
            "`cardbot keys fingerprint-key` prints (with the old key still configured), then "
            "rotate again.",
            file=sys.stderr,
        )
        return 2
    elif len(vault.key_ids) == 1:
        print(
            "note: only CARDBOT_DATA_KEY is configured; to rotate, set the new key as "
            "CARDBOT_DATA_KEY and the current one in CARDBOT_DATA_KEYS_OLD, then run this."
        )
    marker = await current_generation(factory.engine)
    if marker is None or marker.primary_key_id != vault.primary_key_id:
        marker = await announce(factory.engine, vault, "rotate", now())
    print(f"key generation {marker.generation}: sealing with key {marker.primary_key_id}")
    late = await wait_for_holders(
        factory.engine, marker.generation, wait_seconds=wait_seconds, now=now
    )
    if late:
        print(
            f"cardbot: {len(late)} running process(es) have not picked up key "
            f"{marker.primary_key_id}; nothing was re-encrypted (every process can still open "
            "everything). Processes using the key file pick it up by themselves; restart those "
            "configured with CARDBOT_DATA_KEY with the new keys. Then run `cardbot keys rotate` "
            "again (environment keys) or `cardbot keys prune` (key file).",
            file=sys.stderr,
        )
        _print_late(late, now())
        return 1
    done = await census(factory, vault, rewrap=True)
    check = await census(factory, vault)
    _print("re-encrypted", done, vault)
    _print("check", check, vault)
    if check.broken:
        return 1
    if _uses_key_file(settings):
        print("next: `cardbot keys prune` removes the old keys")
    else:
        print("next: remove CARDBOT_DATA_KEYS_OLD once `cardbot keys status` shows 0 on it")
    return 0


async def prune(settings: Settings, now: Now = _utc_now) -> int:
    """Refused while a running process holds an older key generation; otherwise re-encrypt
    stragglers, prove everything opens with the primary alone, drop the old keys."""
    if not _uses_key_file(settings):
        print(
            "cardbot: keys come from CARDBOT_DATA_KEY: remove CARDBOT_DATA_KEYS_OLD yourself "
            "once `cardbot keys status` shows nothing on the old keys",
            file=sys.stderr,
        )
        return 2
    factory = await storage_for(settings)  # a missing database stops it before the key file
    try:
        return await _prune(settings, factory, now)
    except KeyConfigError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    finally:
        await factory.dispose()


async def _prune(settings: Settings, factory: SqlAlchemyUnitOfWorkFactory, now: Now) -> int:
    vault = vault_for(settings)
    if len(vault.key_ids) == 1:
        print("the key file holds only the primary key: nothing to prune")
        return 0
    marker = await current_generation(factory.engine)
    if marker is None or marker.primary_key_id != vault.primary_key_id:
        marker = await announce(factory.engine, vault, "rotate", now())
    late = behind(await holders(factory.engine), marker.generation, now())
    if late:
        print(
            f"cardbot: {len(late)} running process(es) still hold an older key generation and "
            "may seal with an old key; nothing removed. Processes using the key file catch up "
            "by themselves within a minute; restart any that do not.",
            file=sys.stderr,
        )
        _print_late(late, now())
        return 1
    await census(factory, vault, rewrap=True)
    check = await census(factory, vault)
    if check.broken or check.on_old_keys:
        _print("check", check, vault)
        print(
            "cardbot: some sealed values still need other keys; nothing removed", file=sys.stderr
        )
        return 1
    dropped = drop_old_keys_from_file(settings.resolved_key_file)
    alone = vault_for(settings)
    await announce(factory.engine, alone, "prune", now())
    final = await census(factory, alone)
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
