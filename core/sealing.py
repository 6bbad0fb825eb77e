"""Where each ciphertext belongs: the associated data that binds a sealed value to its row and
field, so a blob copied to another row or field does not open. One place, because key
rotation (``storage.rekey``) must rebuild exactly the contexts the writers used.

Sealed values in a conversation's state are the data fields whose names end in ``_enc``
(base64 of a vault blob), bound to the conversation."""

from __future__ import annotations

SEALED_DATA_SUFFIX = "_enc"


def card_context(card_id: int, field: str) -> str:
    """A card's number or secret (``field``: ``number`` | ``secret``)."""
    return f"card.{field}:{card_id}"


def user_context(user_id: int, field: str) -> str:
    """A person's identity data (``field``: ``real_name`` | ``id_number`` | ``phone``)."""
    return f"user:{user_id}.{field}"


def account_context(account_id: int) -> str:
    """A payout account number."""
    return f"payout_account:{account_id}"


def holder_context(account_id: int) -> str:
    """The name a payout account is held in."""
    return f"payout_account:{account_id}.holder_name"


def conversation_context(channel: str, user_key: str) -> str:
    """Values kept sealed in a conversation's state between two messages."""
    return f"conversation:{channel}:{user_key}"


def is_sealed_field(name: str) -> bool:
    """Whether a conversation data field holds a sealed value."""
    return name.endswith(SEALED_DATA_SUFFIX)
