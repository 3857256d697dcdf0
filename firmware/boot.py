"""Board boot script (copy to the filesystem root as ``boot.py``).

Runs before main.py at every reset, including each wake from deep sleep, so it
does as little as possible: silence the ESP-IDF debug output on the UART and
collect garbage before the application allocates its buffers.
"""

import gc
import sys

if sys.platform == "esp32":
    try:
        import esp

        esp.osdebug(None)
    except ImportError:
        pass
gc.collect()
