"""Run the firmware's portable tests under the MicroPython unix port.

Usage: micropython tests/firmware/mp_run_firmware.py [REPO_ROOT]

Runs every ``test_*`` function of tests/firmware/test_*_portable.py, prints
one line per test and ``RESULT passed=N failed=M``, exits 1 on any failure.
"""

import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, root)
here = root + "/tests/firmware"

passed = 0
failed = 0
for name in sorted(os.listdir(here)):
    if not (name.startswith("test_") and name.endswith("_portable.py")):
        continue
    modname = name[:-3]
    try:
        mod = __import__("tests.firmware." + modname, None, None, [modname])
    except Exception as exc:
        failed += 1
        print("FAIL", modname, "import:", repr(exc))
        sys.print_exception(exc)
        continue
    for attr in sorted(dir(mod)):
        if not attr.startswith("test_"):
            continue
        fn = getattr(mod, attr)
        if not callable(fn):
            continue
        try:
            fn()
        except Exception as exc:
            failed += 1
            print("FAIL", modname + "::" + attr, repr(exc))
            sys.print_exception(exc)
        else:
            passed += 1
            print("ok", modname + "::" + attr)

print("RESULT passed=%d failed=%d" % (passed, failed))
sys.exit(1 if failed else 0)
