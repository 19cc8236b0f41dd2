#!/usr/bin/env bash
# Install what is missing into the active Python (activate a venv first for isolation): this
# project, editable, with the dependencies pyproject.toml lists (the one dependency list).
#   bash scripts/install.sh          pip install -e .        runtime: torch, deepspeed, ...
#   bash scripts/install.sh --test   pip install -e ".[test]"  and the test extras (pytest, ...)
# torch: an installed torch (a GPU user's CUDA build, say) is kept as it is; without one, a
# machine with no NVIDIA GPU gets the CPU build torch==2.13.0, one with a GPU PyPI's default.
# Every later pip call pins the torch it found, so no dependency can swap it for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: Python 3.10 or newer is needed ($("$PYTHON" --version 2>&1))" >&2; exit 2; }

if ! torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null); then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch>=2.5"
  else
    pip_install torch==2.13.0
  fi
  torch_version=$("$PYTHON" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])')  # before numpy: no warning
fi
project=.
[ "${1:-}" = "--test" ] && project=".[test]"
pip_install -e "$project" "torch==$torch_version"
"$PYTHON" -c "import torch, deepspeed, sentencepiece; print('installed: torch', torch.__version__, '| deepspeed', deepspeed.__version__)" 2>&1 \
  | { grep -v "real_accelerator" || true; }
