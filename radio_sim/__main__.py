"""``python -m radio_sim``: see radio_sim.cli."""

import sys

from radio_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
