"""Finishing what is unfinished: payouts whose outcome arrives later, orders a crash left
half-way. The user hears about it on the channel the order came from, and their conversation
moves on (to choosing another account when a payout failed)."""

from __future__ import annotations

import logging

from core import sale
from core.ports import Notifier
from handlers.engine import Services, apply_outcome
from handlers.i18n import Translator
from handlers.sell import settlement_outcome

log = logging.getLogger(__name__)


async def finish_unfinished(services: Services, notifier: Notifier) -> int:
    """Resume settlements and tell each user whose order changed; returns how many changed."""
    changed = await sale.resume_unfinished(services.uow_factory, services.sale)
    for order in changed:
        async with services.uow_factory() as uow:
            user = await uow.users.get(order.user_id)
            identities = [
                i
                for i in await uow.users.identities(order.user_id)
                if i.channel == order.channel and i.reachable
            ]
        if not identities:
            log.warning("order %s changed but its user has no reachable identity", order.id)
            continue
        identity = identities[0]
        outcome = await settlement_outcome(services, Translator(user.language), order)
        for reply in outcome.replies:
            await notifier.notify(identity.channel, identity.external_id, reply)
        # A user busy with another sale is not pulled out of it; /start brings them back.
        await apply_outcome(
            services, identity.channel, identity.external_id, outcome, only_for_order=order.id
        )
    return len(changed)
