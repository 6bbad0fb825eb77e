"""The channel-neutral message model: what every channel adapter translates to and from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Channel(StrEnum):
    CONSOLE = "console"
    TELEGRAM = "telegram"
    WECHAT = "wechat"


class InputKind(StrEnum):
    TEXT = "text"
    COMMAND = "command"
    IMAGE = "image"
    DOCUMENT = "document"
    OPTION = "option"


@dataclass(frozen=True)
class Inbound:
    """One message from a person, as any channel delivers it.

    ``message_id`` is the channel's external id used for dedupe (Telegram update_id, WeChat MsgId
    or FromUserName+CreateTime, a counter in the console). Exactly one payload field is set.
    """

    channel: str
    user_id: str
    chat_id: str
    message_id: str
    language: str | None = None
    text: str | None = None
    command: str | None = None
    args: str = ""
    image: bytes | None = None
    document: bytes | None = None
    filename: str | None = None
    option: str | None = None

    @property
    def kind(self) -> InputKind:
        """Which payload this message carries."""
        if self.command is not None:
            return InputKind.COMMAND
        if self.option is not None:
            return InputKind.OPTION
        if self.image is not None:
            return InputKind.IMAGE
        if self.document is not None:
            return InputKind.DOCUMENT
        return InputKind.TEXT


@dataclass(frozen=True)
class Option:
    """A choice offered with a reply: Telegram button, WeChat/console numbered line."""

    id: str
    label: str


@dataclass(frozen=True)
class Reply:
    """What the bot says back. ``delete_inbound`` asks the channel to delete the user's message
    (it carried a card secret); channels that cannot delete ignore it."""

    text: str
    options: tuple[Option, ...] = ()
    image: bytes | None = None
    document: bytes | None = None
    document_name: str | None = None
    delete_inbound: bool = False
