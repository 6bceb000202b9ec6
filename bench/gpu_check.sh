#!/usr/bin/env bash
# One-shot GPU check of splitter: run from the repository root on a CUDA machine, with the
# wheels the machine lacks in .whl/ (see the list printed by the install phase):
#
#     bash bench/gpu_check.sh
#
#   .whl/*.whl ─► pip install --target /tmp/site (unzipped if pip fails) ─► PYTHONPATH=/tmp/site:$PWD
#   ─► nvidia-smi -L, python / torch / numpy versions ─► smoke import (+ compressai on this numpy)
#   ─► pytest tests/test_cuda.py ─► bench/gpu_fit.py (fit steps/s, cuda vs cpu)
#   all output teed to $OUT/gpu_check.log (OUT defaults to /tmp/gpu_check_out); every phase
#   has its own timeout, 340 s in all (+2 s grace each), so the script ends within 6 minutes
#
# The repository is not pip-installed: PYTHONPATH=$PWD finds splitter, bottlenecks, passes and
# targets. splitter reads no entry points; its two importlib.metadata lookups of its own
# distribution fall back to "not installed" / "unknown" (targets/manifest.py,
# splitter/deploy/serve.py), so an install would change nothing the tests look at.
# Every phase runs even if one before it failed; the summary at the end lists each one's exit
# status, and the script exits non-zero if any failed.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}  # another folder of wheels only for a dry run elsewhere

SUMMARY=()
FAILED=0

# phase NAME SECONDS COMMAND...: run COMMAND under its own timeout, record its exit status.
phase() {
    local name=$1 secs=$2
    shift 2
    echo
    echo "=== $name (timeout ${secs} s) at $(date -u +%H:%M:%S) UTC"
    local t0=$SECONDS
    timeout -k 2 "$secs" "$@"
    local rc=$?
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" TIMED OUT"; fi
    SUMMARY+=("$(printf '%-8s rc=%-3s %4s s%s' "$name" "$rc" "$((SECONDS - t0))" "$note")")
    [ "$rc" -eq 0 ] || FAILED=1
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s$note"
    return "$rc"
}

install_wheels() {
    ls -l "$WHEELS"/*.whl || return 1
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl; then
        echo "pip installed the wheels into $SITE"
        return 0
    fi
    echo "pip failed; unzipping the wheels into $SITE instead (pure and binary wheels both work so)"
    rm -rf "$SITE" && mkdir -p "$SITE" || return 1
    for w in "$WHEELS"/*.whl; do
        "$PY" -m zipfile -e "$w" "$SITE" || return 1
    done
}

main() {
    echo "gpu_check: $(date -u) in $PWD; log $LOG"
    export -f install_wheels
    export PY SITE WHEELS
    phase install 40 bash -c install_wheels
    export PYTHONPATH="$SITE:$PWD"
    echo "PYTHONPATH=$PYTHONPATH"

    phase info 20 bash -c '
        nvidia-smi -L
        "$PY" -c "
import sys, numpy, torch
print(\"python\", sys.version.split()[0], sys.executable)
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")
print(\"numpy\", numpy.__version__)
"
        "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|timm|onnx|onnxruntime|onnxscript|onnx-ir|torch.geometric|numpy|scipy|scikit-learn|safetensors|pydantic|typing.extensions) " || true'

    phase smoke 40 "$PY" - <<'EOF'
import importlib
import importlib.metadata as md
import sys

import numpy as np
import torch

failed = []
for name, dist in (("compressai", "compressai"), ("pydantic", "pydantic"),
                   ("pydantic_core", "pydantic-core"), ("constriction", "constriction"),
                   ("typing_extensions", "typing-extensions"), ("pytorch_msssim", "pytorch-msssim"),
                   ("timm", "timm"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                   ("onnxscript", "onnxscript"), ("torch_geometric", "torch-geometric")):
    try:
        m = importlib.import_module(name)
        try:
            v = md.version(dist)
        except md.PackageNotFoundError:
            v = getattr(m, "__version__", "?")
        print(f"import {name:18} {v:14} {m.__file__}")
    except Exception as e:  # noqa: BLE001
        failed.append(name)
        print(f"import {name:18} FAILED: {type(e).__name__}: {e}")

import bottlenecks  # noqa: E402
import splitter  # noqa: E402
import splitter.deploy.export  # noqa: E402,F401
import splitter.train.fit  # noqa: E402,F401

bottlenecks.load_all()
print("splitter, splitter.train.fit, splitter.deploy.export, bottlenecks: imported from",
      splitter.__file__, "; kinds:", sorted(bottlenecks.REGISTRY))

# compressai 1.2.8 declares numpy<2 (the wheels go in with --no-deps): check it on this numpy.
try:
    from bottlenecks._compressai import EntropyBottleneck

    torch.manual_seed(0)
    eb = EntropyBottleneck(4).eval()
    eb.update(force=True)
    y = torch.randn(2, 4, 8, 8) * 3
    strings = eb.compress(y)  # compressai's own rANS (its C++ extension)
    back = eb.decompress(strings, y.shape[-2:])
    assert torch.equal(back, eb.quantize(y, "dequantize", eb._get_medians())), "round trip differs"
    s = splitter.split("test_resnet", at="layer1", bottleneck="entropy", channels=4,
                       input_shape=(3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(s.decode(s.encode(x)), s(x)), "splitter payload round trip differs"
    print(f"NUMPY-COMPRESSAI OK: compressai's and splitter's coders round-trip on numpy "
          f"{np.__version__}")
except Exception as e:  # noqa: BLE001
    failed.append("numpy-compressai")
    print(f"NUMPY-COMPRESSAI FAILED on numpy {np.__version__}: {type(e).__name__}: {e}\n"
          f"  compressai 1.2.8 declares numpy<2; if this is the cause, carry a numpy 1.26.4 cp312 "
          f"wheel in .whl/ (torch {torch.__version__} may then warn or fail: try it first)")

try:
    print("cuda:", torch.cuda.get_device_name(0), "2 * ones(2).sum() =",
          (torch.ones(2, device="cuda") * 2).sum().item())
except Exception as e:  # noqa: BLE001
    failed.append("cuda")
    print(f"CUDA FAILED: {type(e).__name__}: {e}")
print("smoke:", "ok" if not failed else f"FAILED {failed}")
sys.exit(1 if failed else 0)
EOF

    # No -x: one run on the machine, so every failure is worth seeing.
    phase pytest 140 "$PY" -m pytest -q -p no:cacheprovider -rA --durations=10 \
        -o faulthandler_timeout=120 --junitxml="$OUT/test_cuda.xml" tests/test_cuda.py

    phase bench 100 "$PY" bench/gpu_fit.py

    echo
    echo "=== summary"
    printf '%s\n' "${SUMMARY[@]}"
    echo "gpu_check: $([ "$FAILED" -eq 0 ] && echo ALL PHASES PASSED || echo SOME PHASE FAILED) at $(date -u +%H:%M:%S) UTC"
    return "$FAILED"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
