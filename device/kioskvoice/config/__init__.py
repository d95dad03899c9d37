"""The kiosk's settings: one frozen model per concern, loaded from layered sources.

Sources, lowest to highest priority:

1. defaults (below),
2. the TOML file (``--config PATH``; default ``/etc/kioskvoice/kioskvoice.toml``; a missing
   *default* file means defaults, a missing *explicit* file is an error),
3. systemd credentials: a file ``$CREDENTIALS_DIRECTORY/<section>.<key>`` for each secret key
   (``realtime.api_key``, ``realtime.device_token``), so secrets need not sit in the TOML file,
4. environment variables ``KIOSKVOICE_<SECTION>__<KEY>``.

Every problem becomes one :class:`~kioskvoice.errors.ConfigError` whose message is a single line
naming the offending key; secret values never appear in it.
"""

from __future__ import annotations

from .loading import DEFAULT_CONFIG_PATH, load_config, render_toml
from .sections import (
    RESERVED_TOOLS,
    AudioSettings,
    ControlSettings,
    DspSettings,
    GpioSettings,
    InteractionSettings,
    LoggingSettings,
    MetricsSettings,
    RealtimeSettings,
    ToolSettings,
    Voice,
)
from .settings import ENV_DELIMITER, ENV_PREFIX, Settings, secret_keys

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "RESERVED_TOOLS",
    "AudioSettings",
    "ControlSettings",
    "DspSettings",
    "GpioSettings",
    "InteractionSettings",
    "LoggingSettings",
    "MetricsSettings",
    "RealtimeSettings",
    "Settings",
    "ToolSettings",
    "Voice",
    "load_config",
    "render_toml",
    "secret_keys",
]
