"""Offline OpenAI Realtime (GA) simulator for the kiosk, its tests and integrators.

:class:`Simulator` is a real ``websockets`` server on loopback that speaks the GA wire protocol
closely enough for the kiosk, its tests and any GA client (the official ``openai`` SDK included)
to hold turns without the network: it accepts ``session.update``, buffers and commits input
audio, answers ``response.create`` with synthesized speech ("You spoke for N.N seconds.")
streamed faster than real time, and honours ``response.cancel``, ``conversation.item.truncate``,
``conversation.item.create`` and ``input_audio_buffer.clear``. A server VAD runs while the
session's ``turn_detection`` asks for one (see :mod:`kioskvoice.sim.vad`).

Structure (so fault injection can grow without restructuring), one file per concern:

* ``server.py``: :class:`Simulator`, the server; it keeps the records tests read.
* ``handshake.py`` decides the HTTP handshake (path, auth, minted secrets) before any WebSocket
  exists.
* ``connection.py``: each accepted connection gets one ``Connection`` with its own task group:
  a reader, one writer draining an ordered outbox (``outbox.py``), and child tasks for responses
  and transcriptions. Leaving the group cancels everything the connection started.
* Protocol handlers are plain synchronous methods in the connection's dispatch table: the
  connection's own for the two that span concerns (``session.update``,
  ``conversation.item.create``), the rest owned by ``input_audio.py`` (buffer and
  VAD), ``conversation.py`` (items, truncation) and ``responses.py`` (create, cancel; the
  output in between is streamed by ``streaming.py`` in a child task). They validate
  (``validation.py``), mutate the session state (``session.py``) and queue server events; they
  never touch the socket.
* The outbox carries events and control commands (``Close``), so "close with code X after these
  events" is ordered with the events themselves.
* :class:`Faults` (``faults.py``) is read at named points: the handshake
  (``refuse_connections``), dispatch (``error_on``) and response start (``reply_delay_s``).
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
