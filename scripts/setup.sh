#!/usr/bin/env bash
# One-command setup: creates .venv and installs cielr with everything it needs.
# torch/torchvision first (pinned to the releases this platform serves), then sam2 built against
# that torch WITHOUT build isolation (otherwise pip fetches a second multi-GB torch just to build
# it) and without its optional CUDA extension, then the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CIELR_VENV:-.venv}
TORCH_SPEC=${CIELR_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

# The spatial-code sandbox's OS layer: bubblewrap (namespaces) and libseccomp (the syscall filter).
# Without them spatial code is off (fail closed); `cielr doctor` says so.
if [ "$(uname -s)" = Linux ] && ! { command -v bwrap >/dev/null && ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing bubblewrap and libseccomp2 (the sandbox's OS layer)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 >/dev/null; } \
      || echo "[setup] warning: could not install bubblewrap/libseccomp2: LLM-written spatial code will be off"
  else
    echo "[setup] warning: bubblewrap or libseccomp2 is missing (install them, e.g. apt-get install bubblewrap" \
         "libseccomp2): LLM-written spatial code will be off until then"
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip setuptools wheel
echo "[setup] installing $TORCH_SPEC"
$PIP install --quiet $TORCH_SPEC
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  echo "[setup] building sam2 against the installed torch (no build isolation, no CUDA extension)"
  SAM2_BUILD_CUDA=0 $PIP install --quiet --no-build-isolation "sam2>=1.1"
fi
echo "[setup] installing cielr and its test extras"
$PIP install --quiet -e ".[dev]"
"$VENV/bin/cielr" --help >/dev/null
echo "[setup] done: activate with 'source $VENV/bin/activate' (or call $VENV/bin/cielr)"
