"""Offline OpenAI Realtime (GA) simulator for the kiosk, its tests and integrators.

Independent of the kiosk core: nothing here imports the rest of kioskvoice, and the core never
imports this package.
"""

from kioskvoice.sim.server import Faults, SimSession, Simulator, Truncation

__all__ = ["Faults", "SimSession", "Simulator", "Truncation"]
