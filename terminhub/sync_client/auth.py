"""The bearer token of a practice client: fetched by OAuth 2.0 client credentials, renewed before it
expires, and renewed at once when the hub answers 401 (a restarted hub, a rotated key)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

RENEW_BEFORE_S = 60  # renew this long before `expires_in` runs out, so no request carries a dying token


class AuthError(Exception):
    """The hub refused the client credentials (RFC 6749 §5.2 error in `args[0]`)."""


class TokenSource:
    """Hands out a valid access token; `invalidate()` forces the next call to fetch a new one."""

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/auth/token"
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        if self._token is None or self._clock() >= self._renew_at:
            self._fetch()
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        self._token = None

    def _fetch(self) -> None:
        reply = self._http.post(self._url, data=self._form)
        if reply.status_code != 200:
            try:
                error = reply.json().get("error", reply.text)
            except ValueError:
                error = reply.text
            raise AuthError(f"token request refused ({reply.status_code}): {error}")
        body = reply.json()
        lifetime = float(body.get("expires_in", 300))
        self._token = body["access_token"]
        # Short-lived tokens are renewed at half their life instead of a fixed minute before the end.
        self._renew_at = self._clock() + max(lifetime - RENEW_BEFORE_S, lifetime / 2)
