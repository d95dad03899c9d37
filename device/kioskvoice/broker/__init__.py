"""The operator's reference token broker: short-lived Realtime secrets for registered kiosks.

A kiosk holds only a revocable device token. It asks the broker for a secret before every
connection (``POST /v1/realtime/client_secrets``, ``Authorization: Bearer <device token>``);
the broker checks the token against a registry of hashed tokens, mints a short-lived client
secret upstream (OpenAI or Azure OpenAI) with the organisation's key and a session config the
operator controls, and passes the secret back. See ``README.md`` next to this file.

Server side only, and an optional extra (``pip install 'kioskvoice[broker]'``): importing this
package pulls in nothing beyond the standard library; the web stack (Starlette, uvicorn) is
imported by :mod:`kioskvoice.broker.app` and :mod:`kioskvoice.broker.server` alone. Nothing here
imports the kiosk's modules except :mod:`kioskvoice.errors`.
"""

from __future__ import annotations

PATH = "/v1/realtime/client_secrets"
"""Where the broker answers kiosks (the same path as OpenAI's own endpoint)."""
