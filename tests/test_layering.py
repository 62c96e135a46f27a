"""The layers import one way: flows -> tasks -> storage -> cielr_core. Checked on the code itself.

* cielr_core is a plain library: importing every one of its modules pulls in no storage, Prefect,
  fsspec or s3fs (checked in a fresh interpreter, so nothing else has imported them first).
* No stage's store key is spelled outside tasks/keys.py: every key handed to the store in tasks/
  and flows/ comes from a function of that module, and no key prefix appears as a literal.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("storage", "prefect", "fsspec", "s3fs")


def test_cielr_core_imports_no_storage_prefect_fsspec_or_s3fs():
    code = (
        "import importlib, pkgutil, sys\n"
        "import cielr_core\n"
        "names = [m.name for m in pkgutil.walk_packages(cielr_core.__path__, 'cielr_core.')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "assert len(names) > 30, names\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r})\n"
        "assert not any(m.split('.')[0] in ('storage','prefect','fsspec','s3fs') for m in sys.modules), bad\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 30


# -- store keys ---------------------------------------------------------------------------------------
SCANNED = ("tasks", "flows", "cli")
STORE_CALL = ("put_", "get_")
STORE_NAMED = {"exists", "delete", "uri_for", "list"}


def _scanned_files() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    return [p for p in files if p != REPO / "tasks" / "keys.py"]


def _store_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            name = node.func.attr
            if name.startswith(STORE_CALL) or name in STORE_NAMED:
                yield node


def test_every_store_key_comes_from_the_key_module():
    from tasks import keys

    problems, calls = [], 0
    for path in _scanned_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _store_calls(tree):
            calls += 1
            key = call.args[0]
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            for lit in ast.walk(key):
                if isinstance(lit, ast.Constant) and isinstance(lit.value, str) and "/" in lit.value:
                    problems.append(f"{where}: {call.func.attr}() key spelled inline ({lit.value!r})")
            for sub in ast.walk(key):  # keys.NAME(...) must be a function of the key module
                if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                        and isinstance(sub.func.value, ast.Name) and sub.func.value.id == "keys"
                        and not callable(getattr(keys, sub.func.attr, None))):
                    problems.append(f"{where}: keys.{sub.func.attr} is not in tasks/keys.py")
    assert calls > 30, f"the scan found only {calls} store calls: is it still reading the right files?"
    assert not problems, "\n".join(problems)


def test_no_key_prefix_is_spelled_outside_the_key_module():
    from tasks import keys

    problems = []
    for path in _scanned_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for prefix in keys.PREFIXES:
                    if node.value.startswith(f"{prefix}/") or f"/{prefix}/" in node.value:
                        problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("-"):
                if node.value[:-1] in ("segment", "detect", "depth", "ssr", "decompose", "reason", "edit", "final",
                                       "load", "eval"):
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: cache key {node.value!r} spelled inline")
    assert not problems, "\n".join(problems)


def test_the_key_module_spells_each_prefix_it_lists():
    from tasks import keys

    text = (REPO / "tasks" / "keys.py").read_text()
    for prefix in keys.PREFIXES:
        assert f'"{prefix}/' in text or f'f"{prefix}/' in text or prefix == keys.PREFECT_PREFIX, prefix
