# Sourced by scripts/demo and scripts/test: make (once) and update the
# project's virtualenv, then leave its python in $PY.
VENV=${CONVEYOR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
"$VENV/bin/python" -m pip install -q -e ".[${CONVEYOR_EXTRAS:-test}]" 2>&1 | grep -v "^WARNING: Location" || true
PY="$VENV/bin/python"
