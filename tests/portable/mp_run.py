"""Run the portable tests under the MicroPython unix port.

Usage: micropython tests/portable/mp_run.py [REPO_ROOT [PACKAGE_DIR [SUFFIX [TREE]]]]

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
tree = sys.argv[4] if len(sys.argv) > 4 else None
if tree:
    # The device tree (python -m firmware.build: the .mpy files of what is
    # frozen) ahead of the checkout: lowbw and firmware come from there, the
    # tests from the checkout. Tests that need code the device does not
    # freeze (the proxy's side of an exchange) are listed in their module's
    # FULL_TREE (or, for a whole module, a line "# portable: full tree") and
    # left to the run without TREE, which runs only those.
    sys.path.insert(0, tree)
here = root + "/" + package

passed = 0
failed = 0
for name in sorted(os.listdir(here)):
    if not (name.startswith("test_") and name.endswith(suffix)):
        continue
    modname = name[:-3]
    with open(here + "/" + name) as f:
        whole = "\n# portable: full tree\n" in f.read()
    if whole and tree:
        continue
    try:
        mod = __import__(package.replace("/", ".") + "." + modname, None, None, [modname])
    except Exception as exc:  # an import failure fails the whole module
        failed += 1
        print("FAIL", modname, "import:", repr(exc))
        sys.print_exception(exc)
        continue
    full_only = getattr(mod, "FULL_TREE", ())
    for attr in sorted(dir(mod)):
        if not attr.startswith("test_"):
            continue
        if (whole or attr in full_only) == bool(tree):
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
