#!/usr/bin/env bash
# Every CLI command of the README on the shipped model with --device cuda (fp32 and fp16): on a lent GPU
# (benchmarks/gpu_session.sh), since CI and the tests run on CPUs only. Stops at the first failure.
set -eu
O=${1:-/tmp/gpu-smoke}
rm -rf "$O"; mkdir -p "$O"
DEV=${DEV:-cuda}
iv() { echo "+ invedit $*"; python3 -m invedit "$@" >"$O/last.log" 2>&1 || { tail -n 25 "$O/last.log"; exit 1; }; tail -n 2 "$O/last.log"; }
P=assets/photos/astronaut.png
S=assets/scenes/yellow-star.png
for dt in ${DTYPES:-fp32 fp16}; do
    iv roundtrip $P --prompt "a photo" --steps 10 --device $DEV --dtype $dt --out $O/rt-$dt
    iv reconstruct $O/rt-$dt/astronaut.inversion.safetensors --device $DEV --dtype $dt --out $O/rc-$dt
    methods="bdia fixed-point edict null-text negative-prompt direct ddim"
    [ "$dt" = fp32 ] && methods=direct  # every method once, in fp16; fp32 runs each command once
    for m in $methods; do
        iv edit $S -s "a yellow star on a blue background" -t "a red star on a blue background" --method $m \
            --steps 10 --device $DEV --dtype $dt --out $O/edit-$m-$dt
    done
    iv edit $S -s "a yellow star on a blue background" -t "a yellow star on a black background" --blend star \
        --steps 10 --device $DEV --dtype $dt --out $O/blend-$dt
    iv interpolate $S assets/scenes/red-circle.png --frames 4 --steps 10 --device $DEV --dtype $dt --out $O/morph-$dt
    iv interpolate $S assets/scenes/red-circle.png --frames 4 --steps 10 --method bdia --device $DEV --dtype $dt --out $O/morphb-$dt
    iv sample --prompt "a red circle on a blue background" --count 2 --steps 10 --device $DEV --dtype $dt --out $O/s-$dt
done
iv run recipes/recolour-shapes.toml --set steps=5 --set out=\"$O/recipe\" --set device=\"$DEV\"
echo "GPU CLI smoke: all passed"
