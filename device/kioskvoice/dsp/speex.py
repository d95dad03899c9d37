"""Thin ctypes binding of libspeexdsp: echo canceller and preprocessor.

The PyPI ``speexdsp`` package binds only the bare echo filter; the mic path also needs the
preprocessor linked to the echo state (residual echo suppression, denoise, optional AGC and
speech probability), so we bind the C library directly.

Audio is mono signed 16-bit native-endian PCM (``int16``), exactly ``frame_size`` samples per
call. Both classes are *not* thread-safe: the capture callback owns them and is the only
thread that may call them (``close()`` included) while audio runs.

Hot path: inputs are handed to C without conversion (``bytes`` pass as ``char *``), every
instance preallocates its output buffer, and the only copy is the ``bytes`` returned.

The library is loaded lazily, on the first constructor call, so importing this module never
fails; a missing library raises :class:`SpeexUnavailable`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np

from kioskvoice.errors import KioskError

__all__ = [
    "EchoCanceller",
    "Preprocessor",
    "PreprocessorSettings",
    "SpeexError",
    "SpeexUnavailable",
]

# Request numbers from libspeexdsp's public headers (speex/speex_echo.h, speex/speex_preprocess.h).
# They are ABI: tests/test_speex.py re-reads the installed headers and checks each one.
SPEEX_ECHO_GET_FRAME_SIZE = 3
SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_ECHO_GET_SAMPLING_RATE = 25
SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE = 27
SPEEX_ECHO_GET_IMPULSE_RESPONSE = 29

SPEEX_PREPROCESS_SET_DENOISE = 0
SPEEX_PREPROCESS_GET_DENOISE = 1
SPEEX_PREPROCESS_SET_AGC = 2
SPEEX_PREPROCESS_GET_AGC = 3
SPEEX_PREPROCESS_SET_VAD = 4
SPEEX_PREPROCESS_GET_VAD = 5
SPEEX_PREPROCESS_SET_AGC_LEVEL = 6
SPEEX_PREPROCESS_GET_AGC_LEVEL = 7
SPEEX_PREPROCESS_SET_NOISE_SUPPRESS = 18
SPEEX_PREPROCESS_GET_NOISE_SUPPRESS = 19
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS = 21
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE = 23
SPEEX_PREPROCESS_SET_ECHO_STATE = 24
SPEEX_PREPROCESS_GET_ECHO_STATE = 25
SPEEX_PREPROCESS_GET_PROB = 45

_SAMPLE_BYTES = 2  # spx_int16_t

BytesLike = bytes | bytearray | memoryview


class SpeexError(KioskError, RuntimeError):
    """A libspeexdsp call failed or an object was used after ``close()``."""


class SpeexUnavailable(SpeexError):
    """libspeexdsp cannot be loaded (install the Debian package ``libspeexdsp1``)."""


class _SpeexEchoState(ctypes.Structure):
    """Opaque ``SpeexEchoState``; only ever handled through a pointer."""


class _SpeexPreprocessState(ctypes.Structure):
    """Opaque ``SpeexPreprocessState``; only ever handled through a pointer."""


_EchoPtr = ctypes.POINTER(_SpeexEchoState)
_PreprocessPtr = ctypes.POINTER(_SpeexPreprocessState)
# spx_int16_t buffers are declared as char* so that ``bytes`` and ctypes char arrays pass by
# pointer with no copy (a POINTER(c_int16) argtype would reject ``bytes``).
_Pcm = ctypes.c_char_p


@functools.cache
def _library() -> ctypes.CDLL:
    """Load libspeexdsp once and declare the prototypes of every function we call."""
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
        prototypes: dict[str, tuple[list[type], type | None]] = {
            "speex_echo_state_init": ([ctypes.c_int, ctypes.c_int], _EchoPtr),
            "speex_echo_state_destroy": ([_EchoPtr], None),
            "speex_echo_state_reset": ([_EchoPtr], None),
            "speex_echo_cancellation": ([_EchoPtr, _Pcm, _Pcm, _Pcm], None),
            "speex_echo_ctl": ([_EchoPtr, ctypes.c_int, ctypes.c_void_p], ctypes.c_int),
            "speex_preprocess_state_init": ([ctypes.c_int, ctypes.c_int], _PreprocessPtr),
            "speex_preprocess_state_destroy": ([_PreprocessPtr], None),
            "speex_preprocess_run": ([_PreprocessPtr, _Pcm], ctypes.c_int),
            "speex_preprocess_ctl": ([_PreprocessPtr, ctypes.c_int, ctypes.c_void_p], ctypes.c_int),
        }
        for symbol, (argtypes, restype) in prototypes.items():
            function = getattr(lib, symbol)
            function.argtypes = argtypes
            function.restype = restype
    except (OSError, AttributeError) as exc:
        raise SpeexUnavailable(
            f"libspeexdsp is not usable ({exc}); install the Debian package libspeexdsp1"
        ) from exc
    return lib


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_db(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value > 0:
            raise ValueError(f"{name} must be an int <= 0 (an attenuation in dB), got {value!r}")


class EchoCanceller:
    """Speex MDF acoustic echo canceller for one mic channel and one speaker channel.

    ``frame_size`` is in samples per call (160 = 10 ms at 16 kHz), ``filter_length`` is the echo
    tail in samples (rounded up by Speex to a whole number of frames) and must cover the
    reference delay plus the room's reverberation. Not thread-safe: one owner thread.
    """

    _state: ctypes._Pointer[_SpeexEchoState] | None = None  # None once closed

    def __init__(self, frame_size: int, filter_length: int, sample_rate: int) -> None:
        """Create the echo state; raises ValueError, SpeexUnavailable or SpeexError."""
        _check_positive(frame_size=frame_size, filter_length=filter_length, sample_rate=sample_rate)
        lib = _library()
        state = lib.speex_echo_state_init(frame_size, filter_length)
        if not state:
            raise SpeexError("speex_echo_state_init failed")
        self._state = state
        # Bound here so that close() from __del__ works even at interpreter shutdown.
        self._destroy = lib.speex_echo_state_destroy
        self._reset = lib.speex_echo_state_reset
        self._cancel = lib.speex_echo_cancellation
        self._ctl = lib.speex_echo_ctl
        self.frame_size = frame_size
        self.filter_length = filter_length
        self.sample_rate = sample_rate
        self._nbytes = frame_size * _SAMPLE_BYTES
        self._out = ctypes.create_string_buffer(self._nbytes)
        self._view = memoryview(self._out)
        self._linked: weakref.WeakSet[Preprocessor] = weakref.WeakSet()
        rate = ctypes.c_int(sample_rate)
        if self._ctl(state, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate)) != 0:
            self.close()
            raise SpeexError("speex_echo_ctl(SPEEX_ECHO_SET_SAMPLING_RATE) failed")

    def cancel(self, near: bytes, far: bytes) -> bytes:
        """Return ``near`` with the echo of ``far`` removed, as a new ``bytes`` frame.

        ``near`` is the mic frame, ``far`` the reference frame that the speaker played at the
        same time; both are ``bytes`` of exactly ``frame_size * 2`` (ValueError otherwise).
        """
        self.cancel_into(near, far)
        return self._out.raw

    def cancel_into(self, near: bytes, far: bytes) -> memoryview:
        """Like :meth:`cancel` but return a view of the internal output buffer (no copy).

        The view is overwritten by the next call and must not outlive this instance.
        """
        if len(near) != self._nbytes or len(far) != self._nbytes:
            raise ValueError(
                f"near and far must be {self._nbytes} bytes ({self.frame_size} int16 samples), "
                f"got {len(near)} and {len(far)}"
            )
        state = self._state
        if state is None:
            raise SpeexError("EchoCanceller is closed")
        try:
            self._cancel(state, near, far, self._out)
        except ctypes.ArgumentError as exc:
            raise TypeError(
                f"near and far must be bytes, got {type(near).__name__}, {type(far).__name__}"
            ) from exc
        return self._view

    def echo_path(self) -> np.ndarray:
        """The adapted filter as an impulse response (float64, ``filter_length`` rounded up to
        whole frames): the echo of a unit reference sample, sample by sample.

        Speex hands it out scaled by 32767 and its FFT window (two frames) in its floating
        point build, which Debian and Raspberry Pi OS ship; tests/test_speex.py reads a known
        path back to hold the installed library to that.
        """
        state = self._state
        if state is None:
            raise SpeexError("EchoCanceller is closed")
        size = ctypes.c_int32(0)
        if self._ctl(state, SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE, ctypes.byref(size)) != 0:
            raise SpeexError("speex_echo_ctl(SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE) failed")
        taps = (ctypes.c_int32 * size.value)()
        if self._ctl(state, SPEEX_ECHO_GET_IMPULSE_RESPONSE, taps) != 0:
            raise SpeexError("speex_echo_ctl(SPEEX_ECHO_GET_IMPULSE_RESPONSE) failed")
        return np.frombuffer(taps, dtype=np.int32) / (32767.0 * 2 * self.frame_size)

    def reset(self) -> None:
        """Forget the adapted filter (e.g. after the reference path changed).

        ``speex_echo_state_reset`` keeps a few slow estimates, so the output afterwards is not
        bit-identical to a fresh instance's; linked preprocessors stay linked.
        """
        if self._state is None:
            raise SpeexError("EchoCanceller is closed")
        self._reset(self._state)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._state is None

    def close(self) -> None:
        """Destroy the C state (idempotent). Closes every Preprocessor linked to this one."""
        state = self._state
        if state is None:
            return
        # A linked preprocessor keeps a raw pointer to this state; it must go first.
        for preprocessor in list(self._linked):
            preprocessor.close()
        self._state = None
        self._destroy(state)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._state is None else "open"
        return (
            f"EchoCanceller(frame_size={self.frame_size}, filter_length={self.filter_length}, "
            f"sample_rate={self.sample_rate}) [{state}]"
        )


@dataclass(frozen=True, slots=True)
class PreprocessorSettings:
    """The preprocessor's settings as read back from the C state."""

    denoise: bool
    """Stationary noise suppression on."""
    noise_suppress_db: int
    """Maximum noise attenuation (dB, <= 0)."""
    echo_suppress_db: int
    """Maximum residual-echo attenuation while only the far end talks (dB, <= 0)."""
    echo_suppress_active_db: int
    """Maximum residual-echo attenuation during double talk (dB, <= 0)."""
    agc: bool
    """Automatic gain control on."""
    agc_level: float
    """AGC target level (int16 amplitude, 1..32768)."""
    vad: bool
    """Voice activity detection decides :attr:`Preprocessor.voice_active`."""
    echo_linked: bool
    """An echo canceller's state is linked for residual echo suppression."""


class Preprocessor:
    """Speex preprocessor: residual echo suppression, denoise, optional AGC and VAD.

    When ``echo`` is given its state is linked, so each :meth:`run` estimates the residual echo
    from the canceller's last frame: call ``echo.cancel`` then ``run`` on its output, once per
    frame, in that order. ``echo`` must have the same frame size and sample rate, is kept alive by
    this object, and closing it closes this preprocessor too. Not thread-safe: one owner thread.

    libspeexdsp applies the residual echo suppression through the denoiser's gain: with
    ``denoise=False`` nothing is suppressed, and the link only informs :attr:`speech_probability`.
    """

    _state: ctypes._Pointer[_SpeexPreprocessState] | None = None  # None once closed

    def __init__(
        self,
        frame_size: int,
        sample_rate: int,
        *,
        echo: EchoCanceller | None = None,
        denoise: bool = True,
        noise_suppress_db: int = -30,
        echo_suppress_db: int = -40,
        echo_suppress_active_db: int = -15,
        agc: bool = False,
        agc_level: float = 8000.0,
        vad: bool = False,
    ) -> None:
        """Create and configure the state; raises ValueError, SpeexUnavailable or SpeexError.

        Attenuations are dB <= 0. ``agc_level`` is the AGC target as an int16 amplitude in
        1..32768 (8000 is the library default). ``vad`` only changes what :attr:`voice_active`
        reports; :attr:`speech_probability` is computed either way.
        """
        _check_positive(frame_size=frame_size, sample_rate=sample_rate)
        _check_db(
            noise_suppress_db=noise_suppress_db,
            echo_suppress_db=echo_suppress_db,
            echo_suppress_active_db=echo_suppress_active_db,
        )
        if not 1.0 <= agc_level <= 32768.0:
            raise ValueError(f"agc_level must be within 1..32768, got {agc_level!r}")
        if echo is not None:
            if echo.closed:
                raise SpeexError("cannot link a closed EchoCanceller")
            if (echo.frame_size, echo.sample_rate) != (frame_size, sample_rate):
                raise ValueError(
                    f"echo canceller runs {echo.frame_size} samples at {echo.sample_rate} Hz, "
                    f"preprocessor {frame_size} at {sample_rate} Hz; they must match"
                )
        lib = _library()
        self._destroy = lib.speex_preprocess_state_destroy
        self._run = lib.speex_preprocess_run
        self._ctl = lib.speex_preprocess_ctl
        self._init = lib.speex_preprocess_state_init
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self._nbytes = frame_size * _SAMPLE_BYTES
        self._buf = ctypes.create_string_buffer(self._nbytes)
        self._voice = 1
        self._echo = echo
        self._config = (
            denoise,
            noise_suppress_db,
            echo_suppress_db,
            echo_suppress_active_db,
            agc,
            agc_level,
            vad,
        )
        self._open()

    def _open(self) -> None:
        state = self._init(self.frame_size, self.sample_rate)
        if not state:
            raise SpeexError("speex_preprocess_state_init failed")
        self._state = state
        denoise, noise_db, echo_db, echo_active_db, agc, agc_level, vad = self._config
        try:
            self._set_int(SPEEX_PREPROCESS_SET_DENOISE, int(denoise))
            self._set_int(SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, noise_db)
            self._set_int(SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, echo_db)
            self._set_int(SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, echo_active_db)
            self._set_int(SPEEX_PREPROCESS_SET_AGC, int(agc))
            self._ctl_checked(
                SPEEX_PREPROCESS_SET_AGC_LEVEL, ctypes.byref(ctypes.c_float(agc_level))
            )
            # SET_VAD prints a "replaced by a hack" warning to stderr on every call, whatever
            # the value, and the library default is off: only call it to turn VAD on.
            if vad:
                self._set_int(SPEEX_PREPROCESS_SET_VAD, 1)
            if self._echo is not None:
                self._ctl_checked(SPEEX_PREPROCESS_SET_ECHO_STATE, self._echo._state)
                self._echo._linked.add(self)
        except BaseException:
            self.close()
            raise

    def _ctl_checked(self, request: int, pointer: object) -> None:
        if self._ctl(self._state, request, pointer) != 0:
            raise SpeexError(f"speex_preprocess_ctl request {request} failed")

    def _set_int(self, request: int, value: int) -> None:
        self._ctl_checked(request, ctypes.byref(ctypes.c_int32(value)))

    def _get_int(self, request: int) -> int:
        value = ctypes.c_int32()
        self._ctl_checked(request, ctypes.byref(value))
        return value.value

    def _require_open(self) -> ctypes._Pointer[_SpeexPreprocessState]:
        if self._state is None:
            raise SpeexError("Preprocessor is closed (or its EchoCanceller was closed)")
        return self._state

    def run(self, frame: BytesLike) -> bytes:
        """Return the processed frame as new ``bytes``.

        ``frame`` is any contiguous bytes-like object of exactly ``frame_size * 2`` bytes
        (ValueError otherwise), e.g. the view from :meth:`EchoCanceller.cancel_into`.
        """
        if len(frame) != self._nbytes:
            raise ValueError(
                f"frame must be {self._nbytes} bytes ({self.frame_size} int16 samples), "
                f"got {len(frame)}"
            )
        state = self._state
        if state is None:
            raise SpeexError("Preprocessor is closed (or its EchoCanceller was closed)")
        buf = self._buf
        # speex_preprocess_run works in place, so copy into our buffer first; the .raw setter is
        # a plain memcpy, ~15x cheaper than a ctypes.memmove foreign call.
        buf.raw = frame
        self._voice = self._run(state, buf)
        return buf.raw

    @property
    def voice_active(self) -> bool:
        """VAD decision for the last frame (always True unless built with ``vad=True``)."""
        return bool(self._voice)

    @property
    def speech_probability(self) -> float:
        """Speech probability of the last frame, 0.0..1.0 (library resolution: 1 %)."""
        self._require_open()
        return self._get_int(SPEEX_PREPROCESS_GET_PROB) / 100.0

    def settings(self) -> PreprocessorSettings:
        """Read the current settings back from the C state."""
        self._require_open()
        level = ctypes.c_float()
        self._ctl_checked(SPEEX_PREPROCESS_GET_AGC_LEVEL, ctypes.byref(level))
        linked = ctypes.c_void_p()
        self._ctl_checked(SPEEX_PREPROCESS_GET_ECHO_STATE, ctypes.byref(linked))
        return PreprocessorSettings(
            denoise=bool(self._get_int(SPEEX_PREPROCESS_GET_DENOISE)),
            noise_suppress_db=self._get_int(SPEEX_PREPROCESS_GET_NOISE_SUPPRESS),
            echo_suppress_db=self._get_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS),
            echo_suppress_active_db=self._get_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE),
            agc=bool(self._get_int(SPEEX_PREPROCESS_GET_AGC)),
            agc_level=level.value,
            vad=bool(self._get_int(SPEEX_PREPROCESS_GET_VAD)),
            echo_linked=linked.value is not None,
        )

    def reset(self) -> None:
        """Forget all adapted state (noise estimate, AGC gain) by recreating it, same settings."""
        self._require_open()
        self._close_state()
        self._open()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._state is None

    def _close_state(self) -> None:
        state = self._state
        if state is None:
            return
        self._state = None
        self._destroy(state)

    def close(self) -> None:
        """Destroy the C state (idempotent). Does not close the linked EchoCanceller."""
        self._close_state()
        if self._echo is not None:
            self._echo._linked.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self._close_state()

    def __repr__(self) -> str:
        state = "closed" if self._state is None else "open"
        linked = "linked" if self._echo is not None else "unlinked"
        return (
            f"Preprocessor(frame_size={self.frame_size}, sample_rate={self.sample_rate}) "
            f"[{state}, {linked}]"
        )
