"""Entry point of the lowbw firmware.

On a board, copy this file to the filesystem root as ``main.py`` (the rest is
frozen into the firmware, see manifest.py, or copied as the ``firmware`` and
``lowbw`` packages) and the config to ``/config.json``. On the unix port::

    micropython firmware/main.py CONFIG [--cycles N]

The application itself is ``firmware.app``.
"""

import sys


def _find_packages():
    try:
        import firmware  # noqa: F401
    except ImportError:
        # Run as firmware/main.py from a checkout: the packages are one up.
        here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
        sys.path.insert(0, here.rsplit("/", 1)[0] if "/" in here else ".")


def main(argv=None):
    _find_packages()
    from firmware import app

    if argv is None:
        argv = sys.argv[1:]
    return app.main(argv)


if __name__ == "__main__":
    rc = main()
    # Only the unix port has a shell to return to; on a board SystemExit
    # would soft-reset into main.py again.
    if sys.argv:
        sys.exit(rc)
