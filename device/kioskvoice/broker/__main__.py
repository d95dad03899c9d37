"""``python -m kioskvoice.broker serve|add-device|list-devices|revoke-device …``."""

import sys

from .cli import main

sys.exit(main(["broker", *sys.argv[1:]]))
