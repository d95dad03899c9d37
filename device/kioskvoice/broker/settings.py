"""The broker's settings: a small TOML file (default ``/etc/kioskvoice-broker/broker.toml``).

One frozen model per concern: ``[listen]``, ``[upstream]``, ``[session]``, ``[limits]``, plus
the registry's path. The file holds no secret: the upstream API key comes from a systemd
credential or the environment (:func:`load_api_key`), never from a file in the repository or
the config. Every problem is one :class:`~kioskvoice.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kioskvoice-broker/broker.toml")
DEFAULT_REGISTRY_PATH = Path("/var/lib/kioskvoice-broker/devices.toml")
API_KEY_CREDENTIAL = "broker.openai_api_key"
"""Name of the systemd credential holding the upstream key (OpenAI, or the Azure resource's)."""
API_KEY_ENV = "KIOSKVOICE_BROKER_OPENAI_API_KEY"

# The same voices as the kiosk's config; repeated here because the broker imports nothing of
# the device side.
Voice = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ListenSettings(_Section):
    """Where the broker listens. It speaks plain HTTP: put TLS in front of it (a reverse
    proxy or load balancer), since kiosks accept ``https://`` only, except on loopback."""

    host: str = "127.0.0.1"
    """Address to bind: loopback behind a local reverse proxy, ``0.0.0.0``/``::`` otherwise."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """TCP port (0: any free port, logged at start; for tests)."""
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 512
    """Concurrent connections and requests served; beyond it uvicorn answers 503."""
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies whose ``X-Forwarded-For`` names the client in the access log (comma-separated
    addresses or ``*``)."""


class UpstreamSettings(_Section):
    """The service that mints the secrets."""

    kind: Literal["openai", "azure"] = "openai"
    """``openai``: ``POST {url}/v1/realtime/client_secrets`` with ``Authorization: Bearer``.
    ``azure``: ``POST {url}/openai/v1/realtime/client_secrets`` with an ``api-key`` header
    (the GA v1 path; ``url`` is ``https://RESOURCE.openai.azure.com``)."""
    url: str = "https://api.openai.com"
    """Base URL, without the path."""
    timeout_s: Annotated[float, Field(gt=0, le=9)] = 8.0
    """Whole upstream exchange. Below the kiosk's own 10 s fetch timeout, so that a slow
    upstream reaches the kiosk as a 503 it backs off from, not as its own timeout."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError("must be a base URL such as https://api.openai.com (no path)")
        if parts.scheme == "https" and parts.hostname:
            return value.rstrip("/")
        if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
            return value.rstrip("/")
        raise ValueError("must start with https:// (http:// only to loopback)")

    @property
    def endpoint(self) -> str:
        """The client-secret endpoint's full URL."""
        prefix = "/openai" if self.kind == "azure" else ""
        return f"{self.url}{prefix}/v1/realtime/client_secrets"


class SessionSettings(_Section):
    """The session every secret is minted for, whatever the kiosk asks for.

    ``model`` is binding: the secret only opens sessions of that model. ``instructions``,
    ``voice`` and ``tools`` are the session's starting defaults; a client holding the secret
    can change them with ``session.update`` (the kiosk does, from its own config), as the
    Realtime API allows.
    """

    model: str = "gpt-realtime"
    """Model id (Azure: the deployment name)."""
    voice: Voice = "marin"
    """Voice of the replies."""
    instructions: str = (
        "You are a friendly voice assistant in a public kiosk. Answer briefly, in one to three "
        "short sentences, in the language the visitor speaks."
    )
    """System instructions."""
    tools: list[dict[str, Any]] = []
    """Function tools in the GA shape (``[[session.tools]]`` with ``type = "function"``,
    ``name``, ``description``, ``parameters``)."""
    tool_choice: Literal["auto", "none", "required"] = "auto"
    """Sent only when ``tools`` is not empty."""
    ttl_s: Annotated[int, Field(ge=10, le=7200)] = 300
    """Lifetime of a secret: how long it can open new sessions (a running session is not cut
    off when it expires). Kiosks fetch a fresh one for every connection, so minutes suffice."""

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = set()
        for tool in value:
            if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                raise ValueError('each tool needs type = "function" and a name')
            if tool["name"] in names:
                raise ValueError(f"tool {tool['name']!r} is declared twice")
            names.add(tool["name"])
        return value

    def upstream_request(self) -> dict[str, Any]:
        """The body of ``POST /v1/realtime/client_secrets`` for these settings."""
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "audio": {"output": {"voice": self.voice}},
        }
        if self.tools:
            session["tools"] = [dict(tool) for tool in self.tools]
            session["tool_choice"] = self.tool_choice
        return {
            "expires_after": {"anchor": "created_at", "seconds": self.ttl_s},
            "session": session,
        }


class LimitSettings(_Section):
    """Protection against a stolen or misbehaving device."""

    secrets_per_minute: Annotated[float, Field(gt=0, le=6000)] = 6.0
    """Sustained rate of requests per device (a kiosk needs one per connection: at start,
    after a drop, at each rollover)."""
    burst: Annotated[int, Field(ge=1, le=1000)] = 6
    """Requests a device may make at once before the rate applies."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 64 * 1024
    """Largest request body accepted (413 beyond)."""
    body_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Time allowed to receive a request body (408 beyond)."""


class BrokerSettings(_Section):
    """Everything ``kioskvoice broker`` reads from its config file."""

    registry: Path = DEFAULT_REGISTRY_PATH
    """The device registry (TOML, one line per device, token hashes only)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Threshold of the log on stderr (the journal, under systemd)."""
    listen: ListenSettings = ListenSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    session: SessionSettings = SessionSettings()
    limits: LimitSettings = LimitSettings()


def load_settings(path: Path | None = None) -> BrokerSettings:
    """Read and validate the config file.

    ``path`` None means :data:`DEFAULT_CONFIG_PATH`, which may be absent (defaults); an
    explicit path must exist. Raises :class:`ConfigError` with one line naming each bad key.
    """
    explicit = path is not None
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if explicit or path.exists():
        try:
            with path.open("rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {path}: {exc}") from None
    try:
        return BrokerSettings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"config error: {path}: {problems}") from None


def load_api_key(environ: dict[str, str] | None = None) -> str:
    """The upstream API key: ``$KIOSKVOICE_BROKER_OPENAI_API_KEY``, else the systemd credential
    ``$CREDENTIALS_DIRECTORY/broker.openai_api_key``. Surrounding whitespace is dropped; an
    empty value counts as unset (the unit's ``SetCredential=`` default is a lone newline).

    Raises :class:`ConfigError` (never showing the value) when neither is set.
    """
    env = os.environ if environ is None else environ
    key = env.get(API_KEY_ENV, "").strip()
    if key:
        return key
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / API_KEY_CREDENTIAL
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            key = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"config error: {API_KEY_CREDENTIAL}: cannot read credential {path}: "
                f"{type(exc).__name__}"
            ) from None
        if key:
            return key
    raise ConfigError(
        f"config error: {API_KEY_CREDENTIAL}: required (a systemd credential named "
        f"{API_KEY_CREDENTIAL}, or ${API_KEY_ENV})"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
