"""The HTTP session a provider client opens on first use and closes at the end."""

from __future__ import annotations

import aiohttp


class LazyClientSession:
    """One aiohttp session, made on first use because it needs a running loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        """The open session, opened now if there is none or it was closed."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def close(self) -> None:
        """Close the session, if one was opened."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
