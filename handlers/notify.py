"""Finishing what is unfinished: payouts whose outcome arrives later, orders a crash left
half-way. The user hears about it on the channel the order came from."""

from __future__ import annotations

import logging
from dataclasses import replace

from core import sale
from core.ports import Notifier
from handlers.engine import Services
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
        t = Translator(user.language)
        outcome = await settlement_outcome(services, t, order)
        header = t(
            "pay.notify_settled" if order.status.value == "settled" else "pay.in_progress",
            order=order.number,
            status=t(f"status.{order.status.value}"),
        )
        for reply in (replace(outcome.replies[0], text=header), *outcome.replies[1:]):
            await notifier.notify(identity.channel, identity.external_id, reply)
        async with services.uow_factory() as uow:
            state = await uow.conversations.get(identity.channel, identity.external_id)
            if state is not None and state.data.get("order_id") == order.id and outcome.to:
                data = {**state.data, **(outcome.data or {})}
                await uow.conversations.save(replace(state, step=outcome.to, data=data))
                await uow.commit()
    return len(changed)
