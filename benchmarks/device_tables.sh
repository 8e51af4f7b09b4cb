#!/usr/bin/env bash
# Build, validate and probe latency tables on one device, then run a short search against one,
# all with the `nas` CLI; everything lands in OUT (tables, validation CSV/PNG/JSON, JSON logs).
#
#   benchmarks/device_tables.sh OUT [DEVICE] [SPACE] [PRESET] [SAMPLES]
#
# Used for the committed CUDA tables (results/lut/cuda-*/): on a GPU machine,
#   benchmarks/device_tables.sh /tmp/out cuda efficientpose-a mpii 30
#   benchmarks/device_tables.sh /tmp/out cuda seg-a camvid 20
# (a space with segmentation heads is searched with --task seg, on the embedded synthetic data)
# builds the eager table and the CUDA-graph table of efficientpose-a at 256x256, batch 1, fp32,
# validates both on 30 random networks, times the speed probe, checks that a CPU table is
# refused for a CUDA search, and runs a 4-epoch search on the GPU at a budget in the middle of
# the space's range (end-to-end measured check included).
set -uo pipefail
OUT=${1:?usage: device_tables.sh OUT [DEVICE] [SPACE] [PRESET] [SAMPLES]}
DEVICE=${2:-cpu}
SPACE=${3:-cpu-small}
PRESET=${4:-lsp}
SAMPLES=${5:-30}
NAS=${NAS:-nas}
mkdir -p "$OUT"
log() { echo "== $*" >&2; }
run() { log "$*"; "$@"; }

# input, joints (or classes) and task: a space with segmentation heads is searched with --task seg
read -r HW JOINTS TASK < <(python3 -c "from supernets.space import get_space
sk = get_space('$SPACE', preset='$PRESET').skeleton
(h, w), seg = sk.input_size, bool(get_space('$SPACE').seg_heads)
print(f'{h}x{w}', sk.num_classes if seg else sk.num_joints, 'seg' if seg else 'pose')")
# the names `nas lut build` gives by default (results/lut/<device>/<name>)
eager="$OUT/$SPACE-$HW-b1-fp32.parquet"
graphs="$OUT/$SPACE-$HW-b1-fp32-graphs.parquet"

run $NAS lut build --device "$DEVICE" --space "$SPACE" --preset "$PRESET" --out "$eager" \
    --quiet --json > "$OUT/build-eager.json"
run $NAS lut validate "$eager" --samples "$SAMPLES" --quiet --json > "$OUT/validate-eager.json"
run $NAS lut check "$eager" --json > "$OUT/check-eager.json"
if [[ $DEVICE == cuda* ]]; then
  run $NAS lut build --device "$DEVICE" --space "$SPACE" --preset "$PRESET" --out "$graphs" \
      --cuda-graphs --quiet --json > "$OUT/build-graphs.json"
  run $NAS lut validate "$graphs" --samples "$SAMPLES" --quiet --json \
      > "$OUT/validate-graphs.json"
  run $NAS lut check "$graphs" --json > "$OUT/check-graphs.json"
fi

# a budget in the middle of the space's range on this device, by the eager table
budget=$(python3 - "$eager" <<'EOF'
import sys
from lut import LatencyPredictor, LatencyTable
table = LatencyTable.load(sys.argv[1])
(_, fast), (_, slow) = LatencyPredictor(table).bounds(table.space)
print(f"{(fast + 0.5 * (slow - fast)):.3f}ms")
EOF
)
[[ -n $budget ]] || { log "no budget: the table $eager could not be read"; exit 1; }
log "budget $budget"
run $NAS search --task "$TASK" --device "$DEVICE" --space "$SPACE" --input "$HW" --joints "$JOINTS" \
    --lut "$eager" --budget "$budget" --epochs 4 --train-samples 256 --batch-size 16 \
    --out "$OUT/search" --no-progress --json > "$OUT/search.json"
echo "search exit $?" >&2
