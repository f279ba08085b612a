#!/usr/bin/env bash
# Creates .venv (once) and installs megalite with everything the demo and the tests use.
# torch: kept if already importable; otherwise the CUDA build where nvidia-smi exists, else
# the CPU build (pip install torch==2.13.0). Re-running is quick: it reinstalls megalite only
# when setup.py, pyproject.toml or csrc/ changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        pip install -q torch
    else
        pip install -q torch==2.13.0
    fi
fi

stamp=.venv/.megalite-installed
want=$(cat setup.py pyproject.toml csrc/* | sha1sum | cut -c1-40)
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
    pip install -q setuptools wheel pybind11
    pip install -q --no-build-isolation -e ".[data,hf,dev]"
    echo "$want" > $stamp
fi

# Real Chinese text for examples/clean_and_tokenize_zh.sh and the Chinese cleaning tests: the
# LibreOffice help in Simplified Chinese (MPL-2.0), Debian's libreoffice-help-zh-cn, unpacked into
# .cache/ rather than installed (no root needed, and none of LibreOffice comes with it).
zh=.cache/libreoffice-help-zh-cn
if [ ! -d "$zh/usr" ] && [ ! -d /usr/share/libreoffice/help/zh-CN ] && command -v apt-get >/dev/null 2>&1; then
    mkdir -p "$zh"
    get() { (cd "$zh" && apt-get download -qq libreoffice-help-zh-cn && dpkg-deb -x libreoffice-help-zh-cn_*.deb . \
             && rm -f libreoffice-help-zh-cn_*.deb); }
    { get || { [ "$(id -u)" = 0 ] && apt-get update -qq && get; }; } >/dev/null 2>&1 \
        || { rm -rf "$zh"; echo "warning: libreoffice-help-zh-cn not unpacked; the Chinese corpus tests will be skipped" >&2; }
fi

# The chat page's browser test (tests/test_serve_page.py): Debian's headless Chromium and its driver.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
        >/dev/null 2>&1 || echo "warning: chromium not installed; tests/test_serve_page.py will be skipped" >&2
fi

# GGUF export's test (tests/test_gguf.py) runs our exports in llama.cpp itself: llama-cpp-python
# compiles llama.cpp from source, once, into .venv (pip caches the wheel). Only what the Python
# package loads is built: the CPU library, without the multimodal library, tools, tests,
# examples, server or TLS.
if ! python -c "import llama_cpp" 2>/dev/null; then
    echo "building llama-cpp-python (llama.cpp from source, once: about 8 CPU-minutes)" >&2
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        pip install -q "llama-cpp-python==0.3.36" \
        || echo "warning: llama-cpp-python did not build; tests/test_gguf.py will be skipped" >&2
fi
