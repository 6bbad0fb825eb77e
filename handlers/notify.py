"""Finishing what is unfinished: review decisions made by staff, payouts whose outcome arrives
later, orders a crash left half-way. The user hears about it on the channel the order came
from, and their conversation moves on (to choosing another account when a payout failed)."""

from __future__ import annotations

import logging

from core import review, sale
from core.messages import Reply
from core.model import ChannelIdentity, Order, OrderStatus
from core.ports import Notifier
from handlers.engine import Services, apply_outcome
from handlers.i18n import Translator
from handlers.sell import settlement_outcome

log = logging.getLogger(__name__)


async def finish_unfinished(services: Services, notifier: Notifier) -> int:
    """Announce review decisions, resume settlements and tell each user whose order changed;
    returns how many orders changed."""
    announced = await announce_review_decisions(services, notifier)
    changed = await sale.resume_unfinished(services.uow_factory, services.sale)
    for order in changed:
        found = await _reachable(services, order)
        if found is None:
            continue
        identity, t = found
        outcome = await settlement_outcome(services, t, order)
        for reply in outcome.replies:
            await notifier.notify(identity.channel, identity.external_id, reply)
        # A user busy with another sale is not pulled out of it; /start brings them back.
        await apply_outcome(
            services, identity.channel, identity.external_id, outcome, only_for_order=order.id
        )
    return announced + len(changed)


async def announce_review_decisions(services: Services, notifier: Notifier) -> int:
    """Tell each user the decision about their reviewed order, once."""
    async with services.uow_factory() as uow:
        decided = list(await review.undisclosed_decisions(uow))
    for order in decided:
        assert order.id is not None
        found = await _reachable(services, order)
        if found is not None:
            identity, t = found
            if order.status is OrderStatus.REJECTED:
                text = t("review.rejected", order=order.number, note=order.review_note or "")
            else:
                text = t("review.approved", order=order.number)
            await notifier.notify(identity.channel, identity.external_id, Reply(text))
        async with services.uow_factory() as uow:
            await review.mark_disclosed(uow, order.id, services.sale.clock.now())
            await uow.commit()
    return len(decided)


async def _reachable(
    services: Services, order: Order
) -> tuple[ChannelIdentity, Translator] | None:
    """The user's identity on the order's channel. One marked unreachable (blocked the bot,
    unfollowed) is still returned: the channel keeps or drops the notice as it can (WeChat
    holds it for the user's next message), and the order stays visible in /orders."""
    async with services.uow_factory() as uow:
        user = await uow.users.get(order.user_id)
        identities = [
            i for i in await uow.users.identities(order.user_id) if i.channel == order.channel
        ]
    if not identities:
        log.warning("order %s changed but its user has no identity on %s", order.id, order.channel)
        return None
    identities.sort(key=lambda i: not i.reachable)
    return identities[0], Translator(user.language)
