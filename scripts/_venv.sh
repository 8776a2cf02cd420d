# Sourced by scripts/demo and scripts/test: make .venv (Python >= 3.11) and install into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY' || { echo "hypha-sm needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
raise SystemExit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${EXTRAS:-}" ]; then
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
export PATH="$PWD/.venv/bin:$PATH"
