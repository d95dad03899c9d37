"""kioskvoice: firmware for Raspberry Pi voice kiosks."""

__version__ = "0.1.0"
