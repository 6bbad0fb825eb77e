"""Telegram updates → the channel-neutral :class:`~core.messages.Inbound`: pure functions.

**The dedupe key.** ``Inbound.message_id`` is what the engine records in the inbox in the same
transaction as the message's effect. It is *not* the update_id: update ids are sequential only
until the bot has a week without updates, after which the sequence restarts at a random number —
an update_id alone could then collide with an old recorded one and silently swallow a new
message. The key names the thing whose effect must happen once:

- a message: ``m:<chat id>:<message id>`` — message ids are unique within a chat and never
  reused, and the same message redelivered (getUpdates without confirmation, a webhook retry,
  a switch between polling and webhook) carries the same pair whatever its update_id;
- a button press: ``cb:<callback query id>`` — unique per press across Telegram.

Adding the update_id would not make these more unique, and would make a message redelivered
under another update_id count twice, so it is left out. Updates that have no effect of their own
(``my_chat_member``, edits) need no key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from pathlib import PurePosixPath

from aiogram.types import Document, PhotoSize, Update

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # the Bot API's getFile limit
MAX_CALLBACK_BYTES = 64
HASHED_PREFIX = "#"
# A list of cards sent as a file (batch sale): CSV or plain text, small.
LIST_SUFFIXES = frozenset({".csv", ".txt"})
LIST_MIME_TYPES = frozenset(
    {"text/csv", "text/plain", "application/csv", "text/comma-separated-values"}
)
MAX_LIST_BYTES = 64 * 1024
# Bounds on what an update may carry before anything is stored (issue 12, item 5). Telegram's
# user and chat ids have at most 52 significant bits; message and update ids are smaller.
MAX_ID = 2**53 - 1
MAX_QUERY_ID_CHARS = 64  # callback query ids are ~19 digits
MAX_FILE_ID_CHARS = 256
MAX_FILE_NAME_CHARS = 255
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)


def out_of_bounds(update: Update) -> str | None:
    """What in ``update`` is bigger than anything Telegram sends (an id past 53 bits, an
    over-long callback id or data, file id or file name), or None when it is within bounds."""
    ids: list[tuple[str, int | None]] = [("update_id", update.update_id)]
    texts: list[tuple[str, str | None, int]] = []
    for name, message in (("message", update.message), ("edited_message", update.edited_message)):
        if message is None:
            continue
        ids += [(f"{name}.message_id", message.message_id), (f"{name}.chat.id", message.chat.id)]
        if message.from_user is not None:
            ids.append((f"{name}.from.id", message.from_user.id))
        for size in message.photo or ():
            texts.append((f"{name}.photo.file_id", size.file_id, MAX_FILE_ID_CHARS))
        if message.document is not None:
            texts.append((f"{name}.document.file_id", message.document.file_id, MAX_FILE_ID_CHARS))
            texts.append(
                (f"{name}.document.file_name", message.document.file_name, MAX_FILE_NAME_CHARS)
            )
    query = update.callback_query
    if query is not None:
        ids.append(("callback_query.from.id", query.from_user.id))
        texts.append(("callback_query.id", query.id, MAX_QUERY_ID_CHARS))
        if query.data is not None and len(query.data.encode()) > MAX_CALLBACK_BYTES:
            return "callback_query.data"
        if query.message is not None:
            ids += [
                ("callback_query.message.message_id", query.message.message_id),
                ("callback_query.message.chat.id", query.message.chat.id),
            ]
    member = update.my_chat_member
    if member is not None:
        ids += [
            ("my_chat_member.chat.id", member.chat.id),
            ("my_chat_member.from.id", member.from_user.id),
        ]
    for name, value in ids:
        if value is not None and not -MAX_ID <= value <= MAX_ID:
            return name
    for name, text, limit in texts:
        if text is not None and len(text) > limit:
            return name
    return None


def message_key(chat_id: int, message_id: int) -> str:
    """The inbox key of a message (see the module docstring)."""
    return f"m:{chat_id}:{message_id}"


def callback_key(query_id: str) -> str:
    """The inbox key of a button press."""
    return f"cb:{query_id}"


def encode_option(option_id: str) -> str:
    """Callback data for an option: the id itself when it fits in 64 bytes, else a short hash
    that :func:`decode_option` maps back through the options on the user's screen."""
    raw = option_id.encode()
    if len(raw) <= MAX_CALLBACK_BYTES and not option_id.startswith(HASHED_PREFIX):
        return option_id
    digest = hashlib.sha256(raw).digest()[:18]
    return HASHED_PREFIX + base64.urlsafe_b64encode(digest).decode()


def decode_option(data: str, on_screen: Sequence[str]) -> str:
    """The option id behind callback data. A hash that matches nothing on screen (an old
    keyboard, garbage) is passed on as it is: the conversation refuses it with a clear reply."""
    if not data.startswith(HASHED_PREFIX):
        return data
    for option_id in on_screen:
        if encode_option(option_id) == data:
            return option_id
    return data


def parse_command(text: str) -> tuple[str, str] | None:
    """``/sell@CardBot args`` → (``sell``, ``args``); None when the text is not a command."""
    if not text.startswith("/") or len(text) < 2:
        return None
    head, _, args = text[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name:
        return None
    return name, args.strip()


def pick_photo(sizes: Sequence[PhotoSize], limit: int = MAX_DOWNLOAD_BYTES) -> PhotoSize | None:
    """The largest size of a photo that can be downloaded (≤ ``limit`` bytes when its size is
    known); None when every size is over the limit."""
    fitting = [s for s in sizes if s.file_size is None or s.file_size <= limit]
    if not fitting:
        return None
    return max(fitting, key=lambda s: (s.width * s.height, s.file_size or 0))


def is_image_document(document: Document) -> bool:
    """A file that is a picture (by its MIME type or, failing that, its name)."""
    if document.mime_type and document.mime_type.lower().startswith("image/"):
        return True
    suffix = PurePosixPath(document.file_name or "").suffix.lower()
    return suffix in IMAGE_SUFFIXES


def is_list_document(document: Document) -> bool:
    """A file that is a list of cards: a .csv or .txt name (the name is what the handlers go
    by), or a CSV/plain-text MIME type."""
    suffix = PurePosixPath(document.file_name or "").suffix.lower()
    mime = (document.mime_type or "").lower()
    return suffix in LIST_SUFFIXES or mime in LIST_MIME_TYPES
