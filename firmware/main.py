"""Entry point of the lowbw firmware.

On a board, copy this file to the filesystem root as ``main.py`` (the rest is
frozen into the firmware, see manifest.py, or copied as the ``firmware`` and
``lowbw`` packages) and the config to ``/config.json``. On the unix port::

    micropython firmware/main.py CONFIG [--cycles N]

The application itself is ``firmware.app``.
"""

import sys


def _fresh(tree, root):
    """The device tree ``tree`` (python -m firmware.build) is newer than every
    source it lists in its BUILD stamp."""
    import os

    try:
        t = os.stat(tree + "/BUILD")[8]
        with open(tree + "/BUILD") as f:
            for line in f:
                if line.strip() and os.stat(root + "/" + line.strip())[8] > t:
                    return False
    except OSError:
        return False
    return True


def _find_packages():
    try:
        import firmware  # noqa: F401
    except ImportError:
        # Run as firmware/main.py from a checkout: the packages are one up,
        # and the device tree built from them (build/device/mpy, exactly what
        # a board freezes) is used when it is up to date.
        here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
        root = here.rsplit("/", 1)[0] if "/" in here else "."
        tree = root + "/build/device/mpy"
        if _fresh(tree, root):
            sys.path.insert(0, tree)
        else:
            print("lowbw firmware: running the sources (build/device is missing or older:"
                  " python -m firmware.build)")
            sys.path.insert(0, root)


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
