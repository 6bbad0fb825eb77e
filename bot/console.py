"""The console channel: each line typed is a message; ``/photo PATH`` sends an image, ``/file
PATH`` a document; options are answered by their number (the conversation maps digits)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bot.outbox import Delivered, Handed, Retry
from core.messages import Channel, Inbound, Reply
from core.ports import OutboxMessage
from handlers.engine import Conversation


def render_reply(reply: Reply) -> str:
    """A reply as console text: the message, then numbered options."""
    lines = [reply.text]
    lines += [f"  {n}. {option.label}" for n, option in enumerate(reply.options, start=1)]
    return "\n".join(lines)


class ConsoleChannel:
    """Talks to the conversation as one console user."""

    def __init__(
        self,
        conversation: Conversation,
        user_id: str = "console-user",
        lang: str = "zh",
        write: Callable[[str], None] = print,
        channel: str = Channel.CONSOLE.value,
    ) -> None:
        self.conversation = conversation
        self.channel = channel  # another channel's name only in tests that play two channels
        self.user_id = user_id
        self.lang = lang
        self.write = write
        # Unique across restarts, so dedupe never swallows a new line typed after a restart.
        self._ids = (f"{time.time_ns()}-{n}" for n in itertools.count())

    def inbound(self, line: str) -> Inbound | None:
        """Translate a typed line into an inbound message (None: nothing to send)."""
        base = {
            "channel": self.channel,
            "user_id": self.user_id,
            "chat_id": self.user_id,
            "message_id": next(self._ids),
            "language": self.lang,
        }
        stripped = line.strip()
        for prefix, field in (("/photo", "image"), ("/file", "document")):
            if stripped == prefix or stripped.startswith(prefix + " "):
                path = Path(stripped[len(prefix) :].strip()).expanduser()
                try:
                    payload = path.read_bytes()
                except OSError as exc:
                    self.write(f"(console) cannot read {path}: {exc.strerror or exc}")
                    return None
                extra = {"filename": path.name} if field == "document" else {}
                return Inbound(**base, **{field: payload}, **extra)  # type: ignore[arg-type]
        return Inbound(**base, text=line)  # type: ignore[arg-type]

    async def send(self, line: str) -> list[Reply]:
        """Send one typed line and print the replies."""
        inbound = self.inbound(line)
        if inbound is None:
            return []
        replies = await self.conversation.handle(inbound)
        for reply in replies:
            self.write(render_reply(reply))
        return replies


class ConsoleCourier:
    """Delivers outbox messages to the console (the only console user is the one typing)."""

    channel = Channel.CONSOLE.value

    def __init__(self, write: Callable[[str], None] = print, user_id: str | None = None) -> None:
        self.write = write
        self.user_id = user_id

    async def deliver(self, recipient: str, messages: Sequence[OutboxMessage]) -> Handed:
        if self.user_id is not None and recipient != self.user_id:
            # Another console user's message (another terminal on the same database).
            return Handed(len(messages), Retry(f"console user {recipient} is not here"))
        for message in messages:
            self.write(render_reply(message.reply))
        return Handed(len(messages), Delivered("console"))
