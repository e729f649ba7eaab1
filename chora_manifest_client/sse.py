"""A Server-Sent Events decoder (the WHATWG "event stream" format), fed line by line.

Pure: the watch loops feed it the lines httpx reads and get whole events back. httpx has
no SSE support of its own and the format is a dozen rules, so it is written here rather
than adding a dependency for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    """The stream's last event id after this event (it carries over between events)."""
    retry: int | None = None


class Decoder:
    """``decoder.feed(line)`` returns a ``ServerSentEvent`` when ``line`` (without its line
    ending) is the blank line that ends one, else ``None``."""

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, retry = self._event or "message", self._data, self._retry
        self._event, self._data, self._retry = "", [], None
        if not data:
            return None  # per the spec, an event without data is not dispatched
        return ServerSentEvent(event, "\n".join(data), self.last_id, retry)
