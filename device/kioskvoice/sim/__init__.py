"""Offline OpenAI Realtime (GA) simulator for the kiosk, its tests and integrators.

:class:`Simulator` is a real ``websockets`` server on loopback that speaks the GA wire protocol
closely enough for the kiosk, its tests and any GA client (the official ``openai`` SDK included)
to hold turns without the network: it accepts ``session.update``, buffers and commits input
audio, answers ``response.create`` with synthesized speech ("You spoke for N.N seconds.")
streamed faster than real time, and serves every other client event the SDK can send
(``response.cancel``, ``conversation.item.create``/``.truncate``/``.delete``/``.retrieve``,
``input_audio_buffer.clear``; ``output_audio_buffer.clear`` is refused over WebSocket, as the
real service refuses it). A server VAD runs while the session's ``turn_detection`` asks for one
(see :mod:`kioskvoice.sim.vad`).

It behaves like the real service where simulators usually lie (live captures in gauravzqa/llmgw
``capabilities/captures-ws.md``): a bad key, model or beta-shaped client is refused *after* the
upgrade with one ``error`` and a close (3000, 4000); ``session.created`` announces
``expires_at`` and the session ends there (``session_expired``, a clean 1001); a failed reply
is ``response.created`` then ``response.done`` failed with ``status_details.error``;
``rate_limits.updated`` follows each ``response.done`` by ~40 ms; the visitor's transcript
completes ~1.3 s after the commit; content deltas carry ``obfuscation``; the default voice is
``alloy``. Azure's GA endpoint (``/openai/v1/realtime?model=DEPLOYMENT``, ``api-key`` or
bearer) is served next to OpenAI's.

Structure (so fault injection can grow without restructuring), one file per concern:

* ``server.py``: :class:`Simulator`, the server; it keeps the records tests read.
* ``handshake.py`` decides the handshake: the path and outages as HTTP errors, the credential
  (key or minted secret), the beta header and the model right after the upgrade.
* ``connection.py``: each accepted connection gets one ``Connection`` with its own task group:
  a reader, one writer draining an ordered outbox (``outbox.py``), and child tasks for responses
  and transcriptions. Leaving the group cancels everything the connection started.
* Protocol handlers are plain synchronous methods in the connection's dispatch table: the
  connection's own for the two that span concerns (``session.update``,
  ``conversation.item.create``), the rest owned by ``input_audio.py`` (buffer and VAD),
  ``conversation.py`` (items: create, truncate, delete, retrieve) and ``responses.py``
  (create, cancel; the output in between is streamed by ``streaming.py`` in a child task).
  They validate
  (``validation.py``), mutate the session state (``session.py``) and queue server events; they
  never touch the socket.
* The outbox carries events and control commands (``Close``), so "close with code X after these
  events" is ordered with the events themselves.
* :class:`Faults` (``faults.py``) is read at named points: the handshake
  (``refuse_connections``), dispatch (``error_on``), session start (``session_cap_s``,
  ``announced_expiry``), response start (``reply_delay_s``, ``fail_responses``, ``fail_code``)
  and transcription (``transcription_delay_s``).
* The VAD (``vad.py``) is a pure object (PCM in, speech edges out; no clock, no socket); the
  connection's input audio turns its edges into events, commits and responses.
* ``voice.py`` synthesizes the reply audio; ``broker.py`` is a token-broker stand-in minting the
  secrets the simulator accepts.

Independent of the kiosk core: nothing here imports the rest of kioskvoice, and the core never
imports this package.
"""

from kioskvoice.sim.faults import Faults
from kioskvoice.sim.server import Simulator
from kioskvoice.sim.session import SimSession, Truncation

__all__ = ["Faults", "SimSession", "Simulator", "Truncation"]
