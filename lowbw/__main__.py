"""``python -m lowbw``: the ``lowbw`` command (see lowbw.cli)."""

import sys

from lowbw.cli import main

if __name__ == "__main__":
    sys.exit(main())
