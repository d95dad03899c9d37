"""The double-talk gate: while the kiosk speaks, only the visitor's voice may reach the model.

A linear echo canceller leaves a residual (more so with a cheap speaker's distortion, whose
harmonics it cannot model). Sent to the model, that residual is the kiosk's own voice: the
server's VAD would take it for a visitor and the kiosk would interrupt itself. So, per DSP
block on the capture thread, the gate judges two signals: the echo canceller's own output
and the chain's output (after the preprocessor's residual echo suppression and denoise).

- :data:`CLEAR`: the far end has been quiet for longer than the echo lasts: nothing to hold.
- :data:`ECHO`: the far end plays and the output holds nothing the kiosk's own voice does
  not explain: echo only, to be replaced by silence.
- :data:`UNSURE`: the far end plays, but the gate has not learnt enough of what the echo
  filter leaves to tell a visitor from echo (after a start or a reset, see below). While the
  kiosk replies this is held like echo; while it listens (its cue sounds play) it goes
  through, as with voice barge-in off, unless the echo of a reply is still held
  (:class:`~kioskvoice.turn_audio.GatedStream`): a visitor who starts right after the
  listening beep of a fresh kiosk would otherwise lose their first words.
- :data:`VISITOR`: somebody talks over the kiosk. Once found, the verdict holds while the
  kiosk is silent (it stops for them) until the echo has died away (:data:`CLEAR`), and while
  it plays on, as long as their voice stands out at least once every ``hangover`` blocks (a
  pause between words is theirs too).

How a visitor is told from echo, band by band. The residual a canceller leaves follows what
the speaker played a moment ago, but not band for band: a clipping speaker spreads a vowel's
energy into harmonics where the reference holds little. So the gate predicts each band of a
signal from the *whole* reference's recent energy (a sum with a ``decay`` per block, covering
reverberation) and, by ``band_weight`` (in dB: a geometric mean), from the same band's,
times a per-band ratio it learns: the ``quantile`` of the signal's band energy
over that prediction on the last ``window`` echo-only blocks (none is learnt while a visitor
may be talking, so a visitor cannot make the gate learn their voice away). A speaker
distorts its loudest syllables most, so the ratios are learnt per level class (``levels``
classes ``level_db`` apart, by how far the echo is under its recent peak). A visitor's voice
has its own spectrum and timing: in some bands it stands far above that prediction even when
it is 10 dB under the echo overall. A signal's score for a block is the ``rank``-th largest
band excess (one band can be a fluke of the residual; several at once are a voice), taken as
the smaller of this block's and the last one's (a burst of residual seldom lasts two blocks).

Why two signals. The chain's output is where a visitor stands out most: the preprocessor
takes 10 dB more of the echo than the canceller while the kiosk speaks. But its suppression
follows the canceller's own echo estimate, which collapses the moment a loud syllable ends,
while the room still rings with the distorted syllable: for a few blocks the output holds the
residual almost whole (measured: 2-6 dB under the microphone), and that scores like a voice.
The canceller's own output has no such swings (its residual follows the room), but a voice
stands out less in it. A visitor is in both; a suppressor's lapse only in one. So a visitor
opens the gate with a score over ``open_db`` in the output *and* over ``cancelled_open_db``
in the canceller's output, in the same block or, when the output's score was over ``hold_db``
in the block before too, in one of the ``cancelled_window`` - 1 before; once open, the output
alone keeps it open (over ``hold_db``). (A score is already the smaller of two blocks' excess:
opening on an earlier block of the canceller's needs the output's excess over ``open_db`` in
this block and the last, and over ``hold_db`` in the one before.)

Measured offline in the virtual room of issue 16 (echo -20 dBFS, distortion 0.3, delay 60 ms;
the real room device and chain, the chain's resets included), on 30 minutes of reply in
eleven impulse responses, twelve espeak voices and twelve texts (and distortion 0.5, and
120 ms delay): no false visitor; the output alone at its best threshold had 8 in 22 of those
minutes. The daemon (make bench: minute-long replies in the acceptance's three rooms) had
none in 771 s, where the output alone had 3 in 441 s. A visitor at -15 dBFS is found in
50-150 ms; at -30 dBFS (10 dB under the echo) 3 s into a reply of a kiosk that has spoken
before, in 70-330 ms offline (15 of 15) and the kiosk is silent 150-280 ms after their onset
in the daemon (20 of 20). These figures are the earlier rule's (below).

The band's share and the window came later. Before, each band's prediction followed the whole
reference only, and both signals had to stand out in the same block: over a wider offline set
(six rooms, eight espeak voices, four visitors' voices and questions, 252 moments 3 to 8 s
into a reply in service) 50 visitors of 252 were found later than 500 ms; now 27 (median
140 ms, 90th percentile 600 ms). In 3.9 h of echo-only replies (six rooms, distortion 0.3 and
0.5, delay 60 and 120 ms, echo at -20 and -15 dBFS) now no false visitor, where the old rule
had one (the acceptance's small room, at the end of a loud syllable). Measured on the way:
the band's share alone (34 late), the window without its two-block condition (23 late, but
with that false visitor); a lower ``cancelled_open_db``, ``rank`` 2 or a ``quantile`` of 0.8
bought a few visitors for 1-10 false ones.

Tried and not kept: the coherence of the output with the reference (and with cubed or clipped
copies of it, for the harmonics) separates little (the canceller's divergence bursts score
0.7-0.9, a visitor up to 0.7), nor does a separate ratio for the blocks of a dying echo.

Why a window and not a running quantile tracker (which rose 0.9 dB a block above and fell
0.1 dB below): a fresh echo filter leaves much more echo in its first second than once it
has converged, and the tracker took many seconds of the kiosk's voice to come down from
there; until then a quiet visitor did not stand out. In the daemon that was 5 of 20 visitors
at -30 dBFS missed 3 s into the *second* reply (the filter reset once, when the delay was
found in the first), and 9 of 10 in the first. The window forgets the unconverged filter
within ``window`` blocks of each level class.

After a reset (a fresh echo filter, also when the delay is first found) the gate learns for
``warmup`` far-end blocks, and each level class for half that, before it trusts a score (until
then its verdict is UNSURE): an unconverged canceller passes the echo almost whole. So in the
first reply after a start, a quiet visitor is heard from about 1.5 s in. A canceller that
learnt nothing of the room yet passed the echo almost whole for seconds more: in a kiosk's
very first reply after installation such a visitor, 3 s in, stood out after 1-4 s or not at
all (4 of 10 in make bench, the earlier rule), hence the calibration sound
(:mod:`kioskvoice.calibration`) and the last run's delay and filter at every start
(:mod:`kioskvoice.echo_memory`); with them, the daemon (make bench, the rule above) silences
the kiosk for such a visitor within 290 ms in a fresh install's first reply (10 of 10) and,
but for one at 530 ms, within 290 ms after a restart. A press always interrupts at once.

Pure and cheap: one real FFT of three rows per block (512 points at 16 kHz), no clock, no
I/O.
"""

from __future__ import annotations

import collections
import math

import numpy as np

CLEAR, ECHO, VISITOR, UNSURE = 0, 1, 2, 3
"""The gate's verdict on one block (plain ints: they cross to the loop in a tuple)."""

FAR_ACTIVE_DBFS = -50.0
"""A reference block at least this loud (RMS) is the kiosk speaking."""

_LOW_HZ, _HIGH_HZ = 190.0, 7200.0  # the voice's bands; below: hum, above: little but hiss


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, 1e-2))


class EchoGate:
    """Judges each DSP block; :meth:`judge` from the capture thread only.

    ``echo_blocks``: how many blocks the echo of one reference block lasts in the aligned
    reference (guard, room reverberation and a margin; while the delay is not known yet, the
    largest delay too): the far end counts as active that long after its last loud block.
    ``rate``: the DSP sample rate (for the bands). ``open_db`` applies to the chain's output,
    ``cancelled_open_db`` to the canceller's own output (see the module docstring).
    """

    def __init__(
        self,
        echo_blocks: int,
        *,
        rate: int = 16000,
        bands: int = 18,
        decay: float = 0.7,
        rank: int = 3,
        open_db: float = 12.0,
        cancelled_open_db: float = 8.0,
        hold_db: float = 8.0,
        hangover: int = 25,
        quantile: float = 0.9,
        window: int = 100,
        warmup: int = 50,
        quiet_dbfs: float = -55.0,
        levels: int = 4,
        level_db: float = 4.0,
        far_active_dbfs: float = FAR_ACTIVE_DBFS,
        band_weight: float = 0.5,
        cancelled_window: int = 3,
    ) -> None:
        self._rate = rate
        self._quiet_dbfs = quiet_dbfs
        self._levels = levels
        self._level_db = level_db
        self._peak_db = 0.0
        self._quiet_db = np.zeros(0)
        self._bands = bands
        self._decay = decay
        self._rank = rank
        self._open_db = open_db
        self._cancelled_open_db = cancelled_open_db
        self._band_weight = band_weight
        self._cancelled_window = max(1, cancelled_window)
        self._hold = hold_db
        self._hangover = hangover
        self._quantile = quantile
        self._window = window
        self._warmup = warmup
        self._recent: collections.deque[float] = collections.deque(maxlen=max(1, echo_blocks))
        self._far_gate = 10.0 ** (far_active_dbfs / 10.0) * 32768.0 * 32768.0  # mean square
        self._layout: tuple[int, int, np.ndarray, np.ndarray] | None = None  # size, nfft, ...
        self._floor_db: np.ndarray | None = None  # rows: the output, the canceller's output
        self.reset()
        self.verdict = CLEAR

    @property
    def residual_db(self) -> float:
        """The learnt residual in the chain's output, averaged over the bands: output band
        energy over what the recent reference predicts of it (see the module docstring), dB
        (0 before anything was learnt)."""
        return float(np.mean(self._ratio[:, 0])) if self._ratio is not None else 0.0

    def reset(self) -> None:
        """The echo filter starts afresh: learn what it leaves again before trusting a score."""
        self._ratio: np.ndarray | None = None  # level class x signal (output, cancelled) x band
        self._echo_energy = 0.0
        self._band_energy: np.ndarray | float = 0.0  # the same, band by band
        self._cancelled_recent: collections.deque[float] = collections.deque(
            maxlen=self._cancelled_window
        )
        self._last_score = -np.inf
        self._learnt = 0
        self._seen = [0] * self._levels
        self._last = np.full(2, -np.inf)
        self.score = -np.inf
        """The last block's score in the chain's output, dB over what the echo explains
        (diagnostics and tuning)."""
        self.cancelled_score = -np.inf
        """The same in the canceller's own output."""
        self._since_hit = self._hangover + 1  # blocks since the score last stood out
        self._latched = False

    def resize(self, echo_blocks: int) -> None:
        """The echo now lasts ``echo_blocks`` (the delay was found or moved)."""
        self._recent = collections.deque(self._recent, maxlen=max(1, echo_blocks))

    def _band_power(self, *blocks: bytes | memoryview) -> np.ndarray:
        """Band energies of PCM16 blocks of one length: one row per block."""
        samples = np.frombuffer(b"".join(blocks), dtype=np.int16).astype(np.float32)
        samples = samples.reshape(len(blocks), -1)
        size = samples.shape[1]
        if self._layout is None or self._layout[0] != size:
            nfft = 1 << max(1, (max(1, size) - 1).bit_length())
            hz = np.geomspace(_LOW_HZ, min(_HIGH_HZ, 0.45 * self._rate), self._bands + 1)
            edges = np.unique(np.round(hz * nfft / self._rate).astype(int))
            window = np.hanning(size).astype(np.float32)
            self._layout = (size, nfft, window, edges)
            # White noise at ``quiet_dbfs``, band by band: quieter than that is no voice.
            sigma2 = (32768.0 * 10.0 ** (self._quiet_dbfs / 20.0)) ** 2
            self._quiet_db = _db(sigma2 * float(np.dot(window, window)) * np.diff(edges))
        _, nfft, window, edges = self._layout
        spectrum = np.fft.rfft(samples * window, nfft, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        return np.add.reduceat(power, edges[:-1], axis=1)[:, : len(edges) - 1]

    def judge(self, ref: bytes, cancelled: bytes | memoryview, out: bytes) -> int:
        """One block: ``ref`` the aligned reference, ``cancelled`` the echo canceller's output
        (read during the call only), ``out`` the chain's output (after the preprocessor),
        PCM16 mono of one length.
        Returns (and keeps in :attr:`verdict`) CLEAR, ECHO, VISITOR or UNSURE."""
        self.score = self.cancelled_score = -np.inf
        far = np.frombuffer(ref, dtype=np.int16).astype(np.float32)
        self._recent.append(float(np.dot(far, far)) / max(1, far.size))
        if max(self._recent) < self._far_gate:
            self._track_floor(_db(self._band_power(out, cancelled)))
            self._last = np.full(2, -np.inf)
            self._since_hit, self._latched = self._hangover + 1, False
            self._echo_energy = self._band_energy = 0.0
            self._cancelled_recent.clear()
            self._last_score = -np.inf
            self.verdict = CLEAR
            return CLEAR
        bands = self._band_power(ref, out, cancelled)
        far_energy, heard_db = bands[0], _db(bands[1:])
        self._track_floor(heard_db)
        self._echo_energy = float(np.sum(far_energy)) + self._decay * self._echo_energy
        self._band_energy = far_energy + self._decay * self._band_energy
        echo_db = 10.0 * math.log10(max(self._echo_energy, 1e-2))
        # Each band's prediction follows the whole reference (a clipping speaker's harmonics)
        # and, by ``band_weight``, the same band of it (what the kiosk says there). A band the
        # reference leaves all but empty counts as 30 dB under the whole.
        band_db = _db(np.maximum(self._band_energy, 1e-3 * self._echo_energy))
        predicted_db = (1.0 - self._band_weight) * echo_db + self._band_weight * band_db
        ratio = heard_db - predicted_db
        if self._ratio is None:
            self._ratio = np.tile(ratio, (self._levels, 1, 1))  # a first guess; warm-up corrects it
            self._history = np.zeros((self._levels, self._window, *ratio.shape))
            self._peak_db = echo_db
        # A speaker distorts its loudest syllables most: the ratio is learnt per level class,
        # by how far the echo is under its recent peak (the peak falls 0.1 dB a block).
        self._peak_db = max(echo_db, self._peak_db - 0.1)
        level = min(self._levels - 1, int((self._peak_db - echo_db) / self._level_db))
        learnt = self._ratio[level]
        known = [c for c in range(self._levels) if self._seen[c] >= self._warmup // 2]
        class_trusted = level in known
        assert self._floor_db is not None
        # A level class seen too rarely yet borrows the most cautious known class's ratios.
        guess = learnt if class_trusted or not known else self._ratio[known].max(axis=0)
        expected = np.maximum(
            predicted_db + guess, np.maximum(self._floor_db + 6.0, self._quiet_db)
        )
        excess = heard_db - expected
        scores = np.partition(excess, -self._rank, axis=1)[:, -self._rank]
        smoothed, self._last = np.minimum(scores, self._last), scores
        self.score, self.cancelled_score = float(smoothed[0]), float(smoothed[1])
        trusted = self._learnt >= self._warmup and bool(known)
        playing = self._recent[-1] >= self._far_gate
        # To open, the visitor must stand out in both signals; once open, in the output alone.
        # A voice stands out less in the canceller's output and not always in the very block
        # it does in the output: a block or two before counts too, if the output's score was
        # over hold_db in the last block as well (a residual burst at the end of a loud
        # syllable reaches the canceller's output a block before the suppressor lets it
        # through, and is gone from the output's score a block later).
        self._cancelled_recent.append(self.cancelled_score)
        if self._latched:
            hit = self.score > self._hold
        elif self.score > self._open_db:
            hit = self.cancelled_score > self._cancelled_open_db or (
                max(self._cancelled_recent) > self._cancelled_open_db
                and self._last_score > self._hold
            )
        else:
            hit = False
        self._last_score = self.score
        if trusted and hit:
            self._since_hit = 0
            self._latched = True
        else:
            self._since_hit += 1
            # Once the kiosk has fallen silent for the visitor, what is left is their voice
            # and a dying echo: it all goes through until CLEAR, so the server's VAD never
            # hears a gap in their question. A kiosk still playing needs them to stand out.
            if self._since_hit > self._hangover and playing:
                self._latched = False
        # A tail's ratio says nothing of the room: learnt only while the kiosk plays.
        if playing and not self._latched and self._since_hit > self._hangover:
            seen = self._seen[level]
            history = self._history[level]
            history[seen % self._window] = ratio
            kept = history[: min(seen + 1, self._window)]
            # The ``quantile`` of this class's last ``window`` echo-only ratios (the sample at
            # or just above it: a partition, a tenth of np.quantile's cost on the capture
            # thread); from a handful on (before, the first guess rises to what it sees).
            if len(kept) >= 5:
                k = min(len(kept) - 1, math.ceil(self._quantile * (len(kept) - 1)))
                learnt[...] = np.partition(kept, k, axis=0)[k]
            else:
                np.maximum(learnt, ratio, out=learnt)
            self._learnt += 1
            self._seen[level] = seen + 1
        self.verdict = VISITOR if self._latched else ECHO if trusted else UNSURE
        return self.verdict

    def _track_floor(self, heard_db: np.ndarray) -> None:
        """Each signal's noise floor per band, dB: follows every dip, rises 0.25 dB a block."""
        if self._floor_db is None:
            self._floor_db = heard_db.copy()
        else:
            np.minimum(self._floor_db + 0.25, heard_db, out=self._floor_db)
