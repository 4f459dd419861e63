#!/usr/bin/env bash
# Verify the CUDA strategies on a machine with an NVIDIA GPU in one pass of about five minutes: the tests
# that skip without CUDA (closeness to cpu fp32, the trained model's top-1 agreement, device errors), then
# a 0.19B benchmark of cuda fp16 / bf16 / fp16i8 against the official package's cuda fp16 in the same run.
#
#     bash benchmarks/cuda_check.sh [OUTDIR]        (default: $OUT if set, else cuda-check-out)
#
# Needs torch with CUDA, numpy, pluggy, safetensors, tokenizers and pytest. The official `rwkv` package is
# installed from wheels in .whl/ when that folder exists (for machines that cannot reach a package index:
# `pip download --no-deps rwkv==0.8.32 -d .whl` beforehand). Writes pytest.log, bench.log and RESULTS.md
# (benchmarks/RESULTS.md with this machine's sections added) into OUTDIR; exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-cuda-check-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0

if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rwkv-hub-site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/rwkv-hub-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit(f'cuda_check: torch {torch.__version__} sees no CUDA device; run this on a machine with an NVIDIA GPU')
print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

"$py" -m pytest -q -rs -p no:cacheprovider \
    tests/test_runtime_reference.py tests/test_default_model.py tests/test_runtime_load_errors.py -k cuda \
    2>&1 | tee "$out/pytest.log" || status=1

cp benchmarks/RESULTS.md "$out/RESULTS.md"
gpu=$("$py" -c "import torch, re; print(re.sub('[^a-z0-9]+', '.', torch.cuda.get_device_name().lower()).strip('.'))")
"$py" benchmarks/bench_runtime.py --shapes 0.19b --strategies "cuda fp16,cuda bf16,cuda fp16i8" \
    --official-strategies "cuda fp16" --llamacpp '' --cache /tmp/rwkv-hub-bench --machine "$gpu" \
    --output "$out/RESULTS.md" 2>&1 | tee "$out/bench.log" || status=1
exit $status
