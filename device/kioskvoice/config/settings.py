"""The whole configuration: the sections together, the checks that span them, and which keys
are secrets."""

from __future__ import annotations

from pydantic import BaseModel, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .sections import (
    AudioSettings,
    ControlSettings,
    DspSettings,
    GpioSettings,
    InteractionSettings,
    LoggingSettings,
    MetricsSettings,
    RealtimeSettings,
    ToolSettings,
)

ENV_PREFIX = "KIOSKVOICE_"
ENV_DELIMITER = "__"


class Settings(BaseSettings):
    """The effective kiosk configuration (immutable)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    realtime: RealtimeSettings = RealtimeSettings()
    audio: AudioSettings = AudioSettings()
    dsp: DspSettings = DspSettings()
    interaction: InteractionSettings = InteractionSettings()
    gpio: GpioSettings = GpioSettings()
    control: ControlSettings = ControlSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    tools: list[ToolSettings] = []

    @model_validator(mode="after")
    def _unique_tools(self) -> Settings:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: names must be unique: {names}")
        return self

    @model_validator(mode="after")
    def _timings_agree(self) -> Settings:
        # Each pair would make one of the two settings meaningless, or eat a visitor's turn.
        a, i = self.audio, self.interaction
        if i.min_turn_ms >= a.max_turn_s * 1000:
            raise ValueError(
                f"interaction.min_turn_ms ({i.min_turn_ms} ms) must be shorter than "
                f"audio.max_turn_s ({a.max_turn_s:g} s): every turn would be a tap"
            )
        if i.idle_reset_s < a.max_turn_s:
            raise ValueError(
                f"interaction.idle_reset_s ({i.idle_reset_s:g} s) must be at least "
                f"audio.max_turn_s ({a.max_turn_s:g} s): the conversation would be reset "
                "while a visitor still talks"
            )
        if i.reply_timeout_s > i.idle_reset_s:
            raise ValueError(
                f"interaction.reply_timeout_s ({i.reply_timeout_s:g} s) must not exceed "
                f"interaction.idle_reset_s ({i.idle_reset_s:g} s): the conversation would be "
                "reset before the visitor hears why no answer came"
            )
        if i.thinking_cue_s and i.thinking_cue_s >= i.idle_reset_s:
            raise ValueError(
                f"interaction.thinking_cue_s ({i.thinking_cue_s:g} s) must be shorter than "
                f"interaction.idle_reset_s ({i.idle_reset_s:g} s)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins. The TOML file and credentials arrive as init kwargs (already merged by
        # load_config), so that the environment overrides them.
        return (env_settings, init_settings)


def secret_keys() -> list[tuple[str, str]]:
    """Every ``(section, key)`` whose value is a secret (typed ``SecretStr``)."""
    out = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue  # [[tools]]: their secrets are credentials named in secret_headers
        for key, sub in model.model_fields.items():
            if "SecretStr" in str(sub.annotation):
                out.append((section, key))
    return out
