"""Run the portable tests under the MicroPython unix port.

Usage: micropython tests/portable/mp_run.py [REPO_ROOT [PACKAGE_DIR [SUFFIX]]]

Imports every PACKAGE_DIR/test_*SUFFIX module (default tests/portable, ".py";
the firmware's portable tests use tests/firmware "_portable.py"), calls each ``test_*`` function,
prints one line per test and a final ``RESULT passed=N failed=M`` line, and exits
1 if anything failed. tests/test_micropython.py runs this as part of the suite.
"""

import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, root)
package = sys.argv[2] if len(sys.argv) > 2 else "tests/portable"
suffix = sys.argv[3] if len(sys.argv) > 3 else ".py"
here = root + "/" + package

passed = 0
failed = 0
for name in sorted(os.listdir(here)):
    if not (name.startswith("test_") and name.endswith(suffix)):
        continue
    modname = name[:-3]
    try:
        mod = __import__(package.replace("/", ".") + "." + modname, None, None, [modname])
    except Exception as exc:  # an import failure fails the whole module
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
