#!/usr/bin/env bash
# Installs the Debian packages Tailor builds and tests with (skips what is there)
# and the npm packages of the end-to-end tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# ocl-icd-opencl-dev is only a Recommends of libdnnl-dev, but its cmake config needs OpenCL.
PKGS=(build-essential cmake pkg-config git clang libclang-rt-14-dev
      libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libfmt-dev
      libsentencepiece-dev libzstd-dev libxxhash-dev libyaml-cpp-dev libsqlite3-dev
      libopenblas-dev libdnnl-dev ocl-icd-opencl-dev libpcre2-dev libspdlog-dev libcpp-httplib-dev
      libcurl4-openssl-dev libssl-dev libicu-dev libpng-dev
      chromium)  # the web app's browser test (web/tests/ui.mjs)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from outside Debian (this image ships its own); only ask apt when absent.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# node-llama-cpp ships prebuilt llama.cpp binaries: the real client our GGUF files must load in.
if [ -f tests/e2e/package.json ] && [ ! -d tests/e2e/node_modules/node-llama-cpp ]; then
  (cd tests/e2e && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The web app (web/, `tailor serve`): TypeScript, Vite and chart.js from npm.
if [ -f web/package.json ] && [ ! -d web/node_modules/vite ]; then
  (cd web && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
