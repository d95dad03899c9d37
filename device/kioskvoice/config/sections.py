"""One frozen settings model per concern: ``[realtime]``, ``[audio]``, ``[dsp]``,
``[interaction]``, ``[gpio]``, ``[control]``, ``[logging]`` and ``[[tools]]``, each key with
its docstring (the README's reference follows them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .. import paths

Voice = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RealtimeSettings(_Section):
    """How to reach the Realtime speech-to-speech model."""

    url: str = "wss://api.openai.com/v1/realtime"
    """WebSocket URL of the Realtime endpoint (``ws://`` only for loopback testing)."""
    model: str = "gpt-realtime"
    """Model id, sent as the ``model`` query parameter."""
    voice: Voice = "marin"
    """Voice of the replies; fixed once the model has spoken in a session."""
    instructions: str = (
        "You are a friendly voice assistant in a public kiosk. Answer briefly, in one to three "
        "short sentences, in the language the visitor speaks."
    )
    """System instructions for every session."""
    auth: Literal["bearer", "api-key"] = "bearer"
    """``bearer`` sends ``Authorization: Bearer <key>`` (OpenAI); ``api-key`` sends an
    ``api-key`` header (Azure OpenAI)."""
    api_key: SecretStr | None = None
    """Static API key. Prefer a systemd credential named ``realtime.api_key``."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    """Time allowed for the WebSocket handshake and the session setup."""
    transcribe_input: bool = True
    """Ask the server to transcribe what the visitor said (for logs and context replay)."""
    token_url: str | None = None
    """Token broker that mints short-lived secrets (``POST``, see the README's broker
    contract). When set, no API key is needed on the kiosk."""
    device_token: SecretStr | None = None
    """This kiosk's token for the broker. Prefer a systemd credential named
    ``realtime.device_token``."""
    session_max_s: Annotated[float, Field(ge=5, le=7200)] | None = None
    """Longest a session may live before the kiosk rolls over to a fresh one. Unset: follow
    the cap the server announces in ``session.created`` (``expires_at``: 60 min on OpenAI,
    30 on Azure); set it only to roll over earlier than that."""
    rollover_margin_s: Annotated[float, Field(ge=1, le=3600)] = 120.0
    """How long before the cap the next session is opened (make-before-break)."""
    deliver_within_s: Annotated[float, Field(ge=0, le=120)] = 10.0
    """A turn recorded while the link is down is sent if the link returns within this time
    after the button is released; otherwise the visitor is shown an error."""
    ping_interval_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    """Keepalive ping interval."""
    ping_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    """A link whose ping goes unanswered this long is replaced."""
    fatal_retry_s: Annotated[float, Field(ge=1, le=86400)] = 300.0
    """After a fatal error (bad key, quota, unknown model) retry only this often."""
    replay_turns: Annotated[int, Field(ge=0, le=50)] = 6
    """Recent turns replayed as text into every new session, so a rollover or reconnect
    keeps the conversation."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # ws:// would send the key, or the short-lived secret, in the clear: loopback only.
        if value.startswith("wss://") or (
            value.startswith("ws://") and urlsplit(value).hostname in _LOOPBACK
        ):
            return value
        raise ValueError("must start with wss:// (ws:// only to loopback, for a simulator)")

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str | None) -> str | None:
        return None if value is None else _loopback_or_https(value)

    @model_validator(mode="after")
    def _margin_below_cap(self) -> RealtimeSettings:
        # With the server's own cap the margin is clamped to a third of the session's life.
        if self.session_max_s is not None and self.rollover_margin_s >= self.session_max_s:
            raise ValueError(
                f"rollover_margin_s ({self.rollover_margin_s:g}) must be less than "
                f"session_max_s ({self.session_max_s:g})"
            )
        return self


class AudioSettings(_Section):
    """Microphone and speaker."""

    input_device: str = "default"
    """Capture device: a PortAudio device name (case-insensitive substring) or ``wav:PATH``
    (the file is looped, paced in real time)."""
    output_device: str = "default"
    """Playback device: a PortAudio device name or ``wav:PATH`` (a WAV file of everything
    played, valid at any stop)."""
    input_channels: Annotated[int, Field(ge=1, le=16)] = 1
    """Channels to open on the capture device (ReSpeaker USB 4-mic, 6-channel firmware: 6)."""
    channel: Annotated[int, Field(ge=0, le=15)] | list[Annotated[int, Field(ge=0, le=15)]] = 0
    """Which captured channel carries the voice (ReSpeaker: 0 is its own processed channel),
    or a list of channels to average (ReSpeaker's raw mics: ``[1, 2, 3, 4]``)."""
    sample_rate: Literal[16000, 24000, 48000] = 16000
    """Capture rate in Hz; the DSP runs at this rate and resamples to 24 kHz for the model."""
    frame_ms: Literal[10, 20] = 20
    """Block length of the audio loop in milliseconds."""
    max_turn_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    """A push held longer than this ends the turn by itself: the turn is sent and answered,
    and a short cue tells the visitor they were cut off."""
    silence_floor_dbfs: Annotated[float, Field(ge=-90, le=-10)] = -50.0
    """A push-to-talk turn whose loudest 20 ms (after echo cancellation and noise
    suppression) stays under this level, and in which the speech detector never fired, is
    silent: it is not sent, and the visitor is asked to speak closer."""

    @model_validator(mode="after")
    def _channel_in_range(self) -> AudioSettings:
        channels = self.channel if isinstance(self.channel, list) else [self.channel]
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channel={self.channel}: give distinct channels")
        if max(channels) >= self.input_channels:
            raise ValueError(
                f"channel={self.channel} needs input_channels > {max(channels)} "
                f"(input_channels={self.input_channels})"
            )
        return self


class DspSettings(_Section):
    """Echo cancellation, noise suppression and gain control on the microphone."""

    enabled: bool = True
    """Run the Speex chain; off: the microphone goes to the model as captured."""
    reference_delay_ms: Literal["auto"] | Annotated[int, Field(ge=0, le=1000)] = "auto"
    """Playback-to-capture delay. ``auto`` measures it from the kiosk's own replies and
    follows drift; a number is what ``kioskvoice dsp`` reports for this kiosk."""
    tail_ms: Literal["auto"] | Annotated[int, Field(ge=20, le=1000)] = "auto"
    """Echo filter length; ``auto`` covers the room (about 160 ms)."""
    denoise: bool = True
    """Noise suppression; it also applies the residual echo suppression."""
    noise_suppress_db: Annotated[int, Field(ge=-60, le=0)] = -30
    """Maximum noise attenuation."""
    echo_suppress_db: Annotated[int, Field(ge=-90, le=0)] = -40
    """Maximum residual echo attenuation while the visitor is silent."""
    echo_suppress_active_db: Annotated[int, Field(ge=-90, le=0)] = -15
    """Maximum residual echo attenuation while the visitor talks."""
    agc: Literal["off", "post", "speex"] = "off"
    """Gain control: ``off`` (measured best here), ``post`` (a slow leveller after the
    chain), ``speex`` (Speex's own AGC)."""
    agc_level_dbfs: Annotated[int, Field(ge=-40, le=-6)] = -24
    """Target speech level for gain control."""
    agc_max_gain_db: Annotated[int, Field(ge=0, le=40)] = 20
    """Most gain the ``post`` leveller applies."""
    max_delay_ms: Annotated[int, Field(ge=50, le=1000)] = 500
    """Longest delay ``auto`` searches for."""
    calibrate: bool = True
    """With voice barge-in on, ``auto`` delay and nothing kept of this room yet (a fresh
    install, new audio devices, ``echo.json`` deleted), the kiosk plays 4 s of soft noise
    once at start so that its echo canceller has learnt the room before the first visitor
    talks over it. Off: it learns in the first reply, where talking over it works late."""


class InteractionSettings(_Section):
    """How visitors talk to the kiosk."""

    mode: Literal["push_to_talk", "hands_free"] = "push_to_talk"
    """``push_to_talk``: hold the button while speaking. ``hands_free``: a press opens a
    conversation in which the server's voice detection takes turns, until ``idle_reset_s``
    without speech or another press."""
    vad: Literal["server_vad", "semantic_vad"] = "server_vad"
    """Hands-free turn detection: ``server_vad`` (silence-based) or ``semantic_vad`` (the
    model judges when the visitor has finished)."""
    voice_barge_in: bool | None = None
    """The visitor may talk over the kiosk: the echo canceller's double-talk gate sends only
    the visitor's voice while the kiosk thinks and speaks, and their first words silence the
    reply. Hands-free: the conversation's turn goes on, ended by the server's VAD. Push-to-talk:
    their voice opens a turn, which ends when they fall quiet (0.8 s), on a press and release,
    or at ``max_turn_s``. Needs ``[dsp] enabled``. Unset: on in hands-free, off in
    push-to-talk."""
    min_turn_ms: Annotated[int, Field(ge=100, le=5000)] = 250
    """A press shorter than this is a tap: nothing is sent (the server rejects < 100 ms)."""
    preroll_ms: Annotated[int, Field(ge=0, le=1000)] = 300
    """Audio from just before the press that is sent with the turn, so the first syllable
    is never clipped."""
    long_press_s: float | None = None
    """Removed, ignored with a warning: a long press is what a long question looks like. A
    new visitor starts after ``idle_reset_s``, on ``gpio.reset_button_pin`` or with
    ``kioskvoice ctl reset``."""
    reply_timeout_s: Annotated[float, Field(ge=1, le=120)] = 8.0
    """A sent turn whose reply has not started this long after the commit (or a reply that
    stops making progress this long) ends in a spoken apology; a reply that starts later is
    cancelled."""
    thinking_cue_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    """A tool call still running this long after the model asked for it plays a soft,
    repeating "still working" sound until the answer starts; 0 turns it off."""
    mic_suspect_turns: Annotated[int, Field(ge=1, le=100)] = 3
    """This many silent push-to-talk turns in a row log ``mic_suspect`` and show the error
    look while idle, until a turn with speech arrives."""
    idle_reset_s: Annotated[float, Field(ge=1, le=86400)] = 120.0
    """After this long without a press the conversation is forgotten: the next visitor
    starts afresh (a new session, nothing replayed)."""
    earcons: bool = True
    """Short sounds on press and on a too-short tap, and a spoken message when a turn cannot
    be served. Played locally, never sent to the model."""
    sound_listening: Path | None = None
    """WAV played on press (default: a short rising beep)."""
    sound_too_short: Path | None = None
    """WAV played on a too-short tap (default: a short falling beep)."""
    sound_offline: Path | None = None
    """WAV played when a turn is released while the link is down (default: a spoken
    "One moment, I am reconnecting...")."""
    sound_error: Path | None = None
    """WAV played when a press cannot be served or a turn was lost (default: a spoken
    "Sorry, I cannot answer right now...")."""
    sound_apology: Path | None = None
    """WAV played when a reply failed, never started or was cut off (default: a spoken
    "Sorry, something went wrong. Please ask me again.")."""
    sound_no_speech: Path | None = None
    """WAV played when a turn held no speech and was not sent (default: a spoken "I did not
    hear anything. Please speak closer to the microphone.")."""
    sound_max_turn: Path | None = None
    """WAV played when a turn reaches ``audio.max_turn_s`` and is sent (default: two short
    beeps)."""
    sound_thinking: Path | None = None
    """WAV repeated while a slow tool call runs (default: a soft two-note chime)."""


class GpioSettings(_Section):
    """Buttons and LEDs (BCM pin numbers)."""

    button_pin: Annotated[int, Field(ge=0, le=27)] | None = 17
    """Push-to-talk button (to ground, internal pull-up); unset for no button."""
    button_active_low: bool = True
    """True when the button connects the pin to ground (pull-up wiring)."""
    debounce_ms: Annotated[int, Field(ge=0, le=500)] = 30
    """Contact chatter shorter than this makes one press (the first edge acts at once)."""
    status_led_pin: Annotated[int, Field(ge=0, le=27)] | None = None
    """Optional single status LED, dimmable (PWM), through a resistor to ground."""
    rgb_led_pins: list[Annotated[int, Field(ge=0, le=27)]] | None = None
    """Optional RGB status LED: [red, green, blue] pins (common cathode)."""
    ring_led_pin: Annotated[int, Field(ge=0, le=27)] | None = None
    """Optional LED in or around the button: lit when a press will be heard."""
    reset_button_pin: Annotated[int, Field(ge=0, le=27)] | None = None
    """Optional "new visitor" button (wired like the main one): a press forgets the
    conversation at once. Unset: the idle reset and ``kioskvoice ctl reset`` remain."""

    @field_validator("rgb_led_pins")
    @classmethod
    def _three_pins(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) != 3:
            raise ValueError("needs three pins: [red, green, blue]")
        return value

    @model_validator(mode="after")
    def _distinct_pins(self) -> GpioSettings:
        pins = [
            self.button_pin,
            self.reset_button_pin,
            self.status_led_pin,
            self.ring_led_pin,
            *(self.rgb_led_pins or []),
        ]
        used = [p for p in pins if p is not None]
        if len(set(used)) != len(used):
            raise ValueError(f"a pin is used twice: {used}")
        return self


class ControlSettings(_Section):
    """The local control socket used by ``kioskvoice ctl``."""

    socket: Path = paths.CONTROL_SOCKET
    """Unix socket path (created mode 0660)."""


class MetricsSettings(_Section):
    """Kiosk metrics for Prometheus, through node_exporter's textfile collector."""

    textfile_dir: Path = Path("/var/lib/prometheus/node-exporter")
    """node_exporter's ``--collector.textfile.directory`` (Debian's default here). The kiosk
    writes ``kioskvoice.prom`` into it; when the directory does not exist, metrics are off."""
    interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    """How often the file is rewritten."""


class LoggingSettings(_Section):
    """Where and what to log."""

    target: Literal["auto", "journal", "stderr"] = "auto"
    """``auto``: journald when started by systemd (``$JOURNAL_STREAM``), else stderr."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    transcripts: bool = False
    """Log what visitors and the kiosk said. Off by default: visitors' privacy."""


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _loopback_or_https(value: str) -> str:
    if value.startswith("https://") or (
        value.startswith("http://") and urlsplit(value).hostname in _LOOPBACK
    ):
        return value
    raise ValueError("must start with https:// (http:// only to loopback)")


RESERVED_TOOLS = frozenset({"end_conversation"})
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)


class ToolSettings(_Section):
    """One operator-defined action the model may call (``[[tools]]``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    """Function name the model uses."""
    description: str
    """What the tool does and when to use it: the model reads this."""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    """JSON Schema of the arguments; the model's arguments are checked against it."""
    url: str
    """Endpoint called with the arguments (https://; http:// only to loopback)."""
    method: Literal["GET", "POST"] = "POST"
    """POST sends the arguments as a JSON body, GET as query parameters."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """A call that takes longer becomes an error the model is told about."""
    headers: dict[str, str] = {}
    """Extra request headers (not secret: shown by check-config)."""
    secret_headers: dict[str, str] = {}
    """Header name -> systemd credential name whose content is the header's value."""
    max_result_bytes: Annotated[int, Field(ge=64, le=1_000_000)] = 4096
    """A longer answer becomes an error the model is told about."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _loopback_or_https(value)

    @field_validator("headers")
    @classmethod
    def _no_secret_in_plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        # Plain headers are shown by check-config and copied into the config file as they
        # are; a credential there would sit readable on the SD card.
        for name in value:
            if name.lower() in _SECRET_HEADERS:
                raise ValueError(
                    f"{name} carries a credential: put it in secret_headers (a systemd "
                    "credential), not headers"
                )
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_TOOLS:
            raise ValueError(f"{value!r} is a built-in tool")
        return value

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError('must be an object schema ({"type": "object", ...})')
        return value
