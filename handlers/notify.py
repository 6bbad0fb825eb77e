"""What a person hears about their order outside their own conversation turn: a payout that
landed (or failed) later, a card the issuer refused at redemption, a review decision.

Each is written to the outbox in the same transaction as its cause — :class:`OutcomeNotices` is
the sale's :class:`~core.sale.SettlementListener`, called inside the transaction that records
the outcome; a review decision is written in the transaction that marks it disclosed — and is
delivered by whichever process serves the person's channel (``bot/outbox.py``). Their
conversation moves on in the same transaction (to choosing another account when a payout
failed); a person busy with another sale is not pulled out of it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from core import review, sale
from core.messages import Reply
from core.model import ChannelIdentity, Order, OrderStatus
from core.ports import OutboxKind, UnitOfWork
from handlers.engine import Services, move_conversation
from handlers.i18n import Translator
from handlers.sell import batch_settlement_outcome_in, settlement_outcome_in

log = logging.getLogger(__name__)

# Orders of a batch that are still on their way: the batch's one receipt waits for them.
_UNDER_WAY = (OrderStatus.APPROVED, OrderStatus.REDEEMED, OrderStatus.PAYING)
# How long an outcome reached in a person's own turn waits for that turn to pass it on.
LIVE_HANDOVER = timedelta(seconds=30)


class OutcomeNotices:
    """Writes a settlement outcome to the outbox and moves the conversation, inside the
    settlement's transaction (the :class:`~core.sale.SettlementListener` of the app)."""

    async def order_changed(
        self, uow: UnitOfWork, deps: sale.SaleDeps, order: Order, live: bool
    ) -> None:
        found = await _reachable(uow, order)
        if found is None:
            return
        identity, t = found
        if order.batch_id is not None:
            others = [o for o in await uow.orders.for_batch(order.batch_id) if o.id != order.id]
            if any(o.status in _UNDER_WAY for o in others):
                return  # the batch's receipt goes when its last card is done
            outcome = await batch_settlement_outcome_in(uow, deps, t, order.batch_id)
        else:
            outcome = await settlement_outcome_in(uow, deps, t, order)
        now = deps.clock.now()
        # From a live turn, the answer passes the outcome on (taking it from the outbox): the
        # channel's worker sends it only if that answer never comes (a crash).
        await uow.outbox.add(
            identity.channel,
            identity.external_id,
            outcome.replies,
            now,
            not_before=now + LIVE_HANDOVER if live else None,
        )
        await move_conversation(
            uow,
            now,
            identity.channel,
            identity.external_id,
            outcome,
            only_for=("batch_id", order.batch_id) if order.batch_id else ("order_id", order.id),
        )


async def finish_unfinished(services: Services) -> int:
    """Announce review decisions and resume settlements nobody is making; returns how many
    orders changed. What each person is told is in the outbox when this returns."""
    announced = await announce_review_decisions(services)
    changed = await sale.resume_unfinished(services.uow_factory, services.sale)
    if announced or changed:
        services.outbox_queued.set()
    return announced + len(changed)


async def announce_review_decisions(services: Services) -> int:
    """Tell each user the decision about their reviewed order, once: the notice and the mark
    that it was given are one transaction."""
    async with services.uow_factory() as uow:
        decided = list(await review.undisclosed_decisions(uow))
    for order in decided:
        assert order.id is not None
        async with services.uow_factory() as uow:
            found = await _reachable(uow, order)
            if found is not None:
                identity, t = found
                if order.status is OrderStatus.REJECTED:
                    text = t("review.rejected", order=order.number, note=order.review_note or "")
                else:
                    text = t("review.approved", order=order.number)
                await uow.outbox.add(
                    identity.channel,
                    identity.external_id,
                    [Reply(text)],
                    services.sale.clock.now(),
                    kind=OutboxKind.NOTICE,
                )
            await review.mark_disclosed(uow, order.id, services.sale.clock.now())
            await uow.commit()
    return len(decided)


async def _reachable(uow: UnitOfWork, order: Order) -> tuple[ChannelIdentity, Translator] | None:
    """The user's identity on the order's channel. One marked unreachable (blocked the bot,
    unfollowed) is still returned: the channel keeps or drops the notice as it can (WeChat
    holds it for the user's next message), and the order stays visible in /orders."""
    user = await uow.users.get(order.user_id)
    identities = [
        i for i in await uow.users.identities(order.user_id) if i.channel == order.channel
    ]
    if not identities:
        log.warning("order %s changed but its user has no identity on %s", order.id, order.channel)
        return None
    identities.sort(key=lambda i: not i.reachable)
    return identities[0], Translator(user.language)
