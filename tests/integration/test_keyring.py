"""Key generations in storage: two vaults over one database stand for two processes.
Clocks are the test's (``LeasePolicy``); nothing waits on real time."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.keyring import (
    CoordinatedVault,
    KeyGenerationStale,
    KeyGenerationUnknown,
    LeasePolicy,
    announce,
    behind,
    current_generation,
    holders,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FINGERPRINT = os.urandom(32)


class Keys:
    """A key configuration that can change under a running process, as a key file can."""

    def __init__(self, *keys: bytes) -> None:
        self.keys = list(keys)

    def vault(self) -> AesGcmVault:
        return AesGcmVault(self.keys, fingerprint_key=FINGERPRINT)


def process(
    factory: SqlAlchemyUnitOfWorkFactory, keys: Keys, monotonic: list[float] | None = None
) -> CoordinatedVault:
    clock = monotonic if monotonic is not None else [0.0]
    policy = LeasePolicy(refresh_seconds=None, now=lambda: NOW, monotonic=lambda: clock[0])
    return CoordinatedVault(keys.vault, factory, policy)


async def test_the_first_process_announces_its_key_and_others_seal_with_it(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    first = process(uow_factory, Keys(old))
    await first.start()
    marker = await current_generation(uow_factory.engine)
    assert marker is not None and marker.generation == 1
    assert marker.primary_key_id == first.sealing_key_id
    # A second process whose configuration lists a newer key first still seals with the
    # generation's key, which every process can open.
    second = process(uow_factory, Keys(new, old))
    await second.start()
    sealed = second.encrypt("13800138000", "user:1.phone")
    assert AesGcmVault.key_of(sealed) == marker.primary_key_id
    assert first.decrypt(sealed, "user:1.phone") == "13800138000"
    assert {h.generation for h in await holders(uow_factory.engine)} == {1}
    await first.stop()
    await second.stop()
    assert await holders(uow_factory.engine) == []


async def test_a_process_whose_keys_cannot_open_the_generations_key_is_refused_at_start(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    running = process(uow_factory, Keys(os.urandom(32)))
    await running.start()
    stranger = process(uow_factory, Keys(os.urandom(32)))
    with pytest.raises(KeyGenerationUnknown, match="cannot open key"):
        await stranger.start()
    assert [h.holder_id for h in await holders(uow_factory.engine)] == [running.holder_id]
    await running.stop()


async def test_a_process_reports_a_new_generation_only_once_its_older_transactions_ended(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    keys = Keys(old)
    bot = process(uow_factory, keys)
    await bot.start()
    keys.keys = [new, old]  # the key file after `keys rotate`
    generation = await announce(uow_factory.engine, keys.vault(), "rotate", NOW)

    # A unit of work begun before the switch may seal under the old key and commit late.
    async with uow_factory():
        await bot.refresh()
        assert bot.generation == generation.generation
        assert bot.sealing_key_id == keys.vault().primary_key_id
        assert bot.reported_generation == 1
        late = behind(await holders(uow_factory.engine), generation.generation, NOW)
        assert [h.holder_id for h in late] == [bot.holder_id]
    await bot.refresh()
    assert bot.reported_generation == generation.generation
    assert behind(await holders(uow_factory.engine), generation.generation, NOW) == []
    await bot.stop()


async def test_a_process_that_cannot_get_the_new_key_stays_behind_and_keeps_sealing(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    old = os.urandom(32)
    bot = process(uow_factory, Keys(old))  # keys from the environment: they never change
    await bot.start()
    generation = await announce(uow_factory.engine, Keys(os.urandom(32), old).vault(), "rotate")
    await bot.refresh()
    assert bot.generation == 1 and bot.reported_generation == 1
    sealed = bot.encrypt("x", "c")
    assert AesGcmVault.key_of(sealed) == Keys(old).vault().primary_key_id
    assert len(behind(await holders(uow_factory.engine), generation.generation, NOW)) == 1
    await bot.stop()


async def test_sealing_stops_when_the_lease_runs_out_and_resumes_after_a_refresh(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    monotonic = [100.0]
    bot = process(uow_factory, Keys(os.urandom(32)), monotonic)
    with pytest.raises(KeyGenerationStale):  # not registered yet
        bot.encrypt("x", "c")
    await bot.start()
    monotonic[0] += LeasePolicy().lease_seconds - 1
    bot.encrypt("x", "c")
    monotonic[0] += 1
    with pytest.raises(KeyGenerationStale, match="not sealing"):
        bot.encrypt("x", "c")
    assert bot.decrypt(bot._vault.encrypt("y", "c"), "c") == "y"  # opening never stops
    await bot.refresh()
    bot.encrypt("x", "c")
    await bot.stop()


async def test_a_holder_silent_past_lease_and_margin_no_longer_counts(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    bot = process(uow_factory, Keys(os.urandom(32)))
    await bot.start()
    [holder] = await holders(uow_factory.engine)
    assert holder.live(NOW + timedelta(seconds=120))
    assert not holder.live(NOW + timedelta(seconds=121))
    assert behind([holder], 2, NOW + timedelta(seconds=121)) == []
    await bot.stop()


async def test_announcements_get_consecutive_generations(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    vault = Keys(os.urandom(32)).vault()
    numbers = [(await announce(uow_factory.engine, vault, "rotate", NOW)).generation]
    numbers.append((await announce(uow_factory.engine, vault, "prune", NOW)).generation)
    assert numbers == [1, 2]
    marker = await current_generation(uow_factory.engine)
    assert marker is not None and marker.reason == "prune" and marker.created_at == NOW


async def test_a_new_key_is_sealed_with_only_once_every_running_process_can_open_it(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    file_keys = Keys(old)  # one key file, read by two processes
    first, second = process(uow_factory, file_keys), process(uow_factory, file_keys)
    await first.start()
    await second.start()
    file_keys.keys = [new, old]
    generation = await announce(uow_factory.engine, file_keys.vault(), "rotate", NOW)
    new_id = file_keys.vault().primary_key_id

    await first.refresh()  # it has the new key, the other process not yet
    assert new_id in first.key_ids and first.sealing_key_id != new_id
    assert second.decrypt(first.encrypt("x", "c"), "c") == "x"
    await second.refresh()  # the first can open it: the second seals with it at once
    assert second.sealing_key_id == new_id and second.generation == generation.generation
    assert first.decrypt(second.encrypt("y", "c"), "c") == "y"
    await first.refresh()
    assert first.sealing_key_id == new_id
    assert behind(await holders(uow_factory.engine), generation.generation, NOW) == []
    await first.stop()
    await second.stop()


async def test_a_process_that_cannot_open_the_newest_key_is_refused_even_if_no_one_uses_it_yet(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    running = process(uow_factory, Keys(old))  # environment keys: it never gets the new one
    await running.start()
    await announce(uow_factory.engine, Keys(new, old).vault(), "rotate", NOW)
    late_starter = process(uow_factory, Keys(old))
    with pytest.raises(KeyGenerationUnknown):
        await late_starter.start()
    # Restarted with both keys, it starts — and seals with the old key, which the running
    # process can open, until that one has the new key too.
    restarted = process(uow_factory, Keys(new, old))
    await restarted.start()
    assert restarted.sealing_key_id == running.sealing_key_id
    await running.stop()
    await restarted.stop()


def test_a_seal_refused_for_a_stale_key_generation_is_storage_trouble_worth_a_retry() -> None:
    from storage.db import is_transient
    from storage.keyring import KeyGenerationStale

    assert is_transient(KeyGenerationStale("not confirmed lately"))
    assert not is_transient(ValueError("a bug"))
