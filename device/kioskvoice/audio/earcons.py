"""Short local sounds: a beep on press and on a too-short tap, spoken messages when a turn
cannot be served. They go through the player, so the echo canceller hears them as far-end
audio, and are never sent to the model.

Defaults ship in ``kioskvoice/data``; ``[interaction] sound_*`` keys replace them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import InteractionSettings
from ..dsp.resample import resample_all
from ..errors import AudioDeviceError, ConfigError
from ..wavio import read_wav

NAMES = (
    "listening",
    "too_short",
    "offline",
    "error",
    "apology",
    "no_speech",
    "max_turn",
    "thinking",
)
RATE = 24000  # the player's source rate
MAX_SECONDS = 10.0


class Earcons:
    """The loaded sounds as 24 kHz PCM16 mono. Construction does no I/O; :meth:`load` reads
    every file and raises :class:`ConfigError` naming the key of a bad one."""

    def __init__(self, settings: InteractionSettings) -> None:
        self.settings = settings
        self._pcm: dict[str, bytes] = {}

    def load(self) -> None:
        if not self.settings.earcons:
            return
        for name in NAMES:
            custom: Path | None = getattr(self.settings, f"sound_{name}")
            try:
                if custom is not None:
                    frames, rate, channels = read_wav(custom)
                else:
                    with resources.as_file(
                        resources.files("kioskvoice") / "data" / f"{name}.wav"
                    ) as path:
                        frames, rate, channels = read_wav(path)
            except AudioDeviceError as exc:
                raise ConfigError(f"config error: interaction.sound_{name}: {exc}") from None
            if channels != 1:
                raise ConfigError(f"config error: interaction.sound_{name}: must be mono")
            if len(frames) > MAX_SECONDS * rate * 2:
                raise ConfigError(
                    f"config error: interaction.sound_{name}: longer than {MAX_SECONDS:g} s"
                )
            self._pcm[name] = resample_all(frames, rate, RATE)

    def get(self, name: str) -> bytes | None:
        """The sound, or None when earcons are off."""
        return self._pcm.get(name)
