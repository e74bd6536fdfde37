#!/usr/bin/env bash
# The GPU measurements of issues 11 and 12 in one run (a lent H100/H200 for a few minutes; see the issue notes):
#   1. bench_realscale, SD 1.5-shaped random model, 512², 50 + 50 steps, guidance 1, fp16, batch 1 and 8
#   2. bench_bigphoto, a 12 MP photo at --max-side 0 (fp16, 2 steps) and one batched decode against two
#   3. bench_realscale, SDXL-shaped random model, 1024², 50 + 50 steps, guidance 1, fp16, batch 1
#   4. gpu_cli_smoke.py: every README command on the shipped model with --device cuda, fp32 and fp16
# PARTS="cli bigphoto" (say) runs some of them, in that order.
# Results (8 files: JSON, Markdown, logs) go to $OUT (default ./gpu-out). diffusers is not on the GPU machine's image:
# carry its wheel (and importlib_metadata's) in .whl/ (git-ignored), as README's "Benchmarks" section says.
# Each part has its own time limit, so that a slow one cannot take the others' results with it.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
smoke() {  # a tiny SDXL-shaped model built, loaded on the GPU in fp16 and run through one invert + replay
    python3 - <<'PY'
import os, tempfile, torch, diffusers, transformers
from invedit.model import load_model
from invedit.model.build import save_tiny_xl_pipeline
from invedit.methods import Conditioning, invert_with, replay
from invedit.schedule import Schedule
with tempfile.TemporaryDirectory() as tmp:
    m = load_model(save_tiny_xl_pipeline(f"{tmp}/xl"), device=os.environ.get("SMOKE_DEVICE", "cuda"),
                   dtype=os.environ.get("SMOKE_DTYPE", "fp16"))
    c = Conditioning(m.eps, m.encode_text(["a cat"]), m.encode_negative(""), 1.0)
    s = Schedule.create(m.noise, 4)
    z = m.encode_image(torch.zeros(1, 3, 64, 64))
    r = invert_with("bdia", c, z, s)
    print("smoke ok: bdia error", float((replay("bdia", c, r.x_T, r.extras, s) - z).norm() / z.norm()))
print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)
PY
}
if ! smoke >>"$OUT/gpu.txt" 2>&1; then  # the image's transformers failed us: the carried one (tested here)
    echo "smoke test failed with the image's packages; retrying with .whl/alt" | tee -a "$OUT/gpu.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/alt/*.whl
    smoke >>"$OUT/gpu.txt" 2>&1 || { tail -n 30 "$OUT/gpu.txt"; exit 1; }
fi
tail -n 2 "$OUT/gpu.txt"

part() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - start)) s"
    grep -v "^\[transformers\]\|Writing model shards" "$OUT/$name.log" | tail -n 14
}

for name in ${PARTS:-sd15 bigphoto sdxl cli}; do
    case $name in
    sd15) part sd15 "${SD15_LIMIT:-250}" python3 benchmarks/bench_realscale.py --sizes 512 --batches 1 8 --dtypes fp16 \
            --steps 50 --repeats "${SD15_REPEATS:-3}" --warmup "${SD15_WARMUP:-3}" --methods ${SD15_METHODS:-ddim bdia} --guidance 1 \
            --json "$OUT/realscale-gpu-512.json" --markdown "$OUT/realscale-gpu-512.md" ;;
    bigphoto) part bigphoto "${BIG_LIMIT:-100}" python3 benchmarks/bench_bigphoto.py --dtype fp16 --steps 2 ;;
    sdxl) part sdxl "${SDXL_LIMIT:-200}" python3 benchmarks/bench_realscale.py --family sdxl --sizes 1024 --batches 1 \
            --dtypes fp16 --steps 50 --repeats 2 --guidance 1 --json "$OUT/realscale-gpu-sdxl.json" \
            --markdown "$OUT/realscale-gpu-sdxl.md" ;;
    cli) part cli "${CLI_LIMIT:-150}" python3 benchmarks/gpu_cli_smoke.py ;;
    esac
done
