#!/usr/bin/env bash
# `make demo`: the whole system in one command (called by the Makefile after `make setup`).
#
#   make demo                            synthetic validation images -> a bag -> the node (demo weights),
#                                        replayed lockstep then at the recorded rate -> accuracy + latency report
#   make demo WEIGHTS=w.safetensors BAG=my_bag   the same on your weights and bag (its ground_truth.json, if
#                                        any, gives the accuracy; without one the report has timing only)
#   make demo TRAIN=1                    first retrain the demo weights from scratch (bench/demo_weights.py)
#   make demo RECORD=1                   also record the run as bench/results/replay_synthetic.json (+ .md)
#
# Other knobs (environment / make variables): OUT (default demo_out), IMAGES (100), SEED (7: not the training
# data's seed), RATE_FACTOR (1: the recorded rate), SCORE (0.05: detection and person score threshold of the
# node; low, because AP integrates over scores). Everything is written under $OUT; an earlier run there is
# replaced only when the new one has finished.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# This checkout's environment, unless one of its own is active already (another venv is not the demo's).
case "${VIRTUAL_ENV:-}" in
  "$ROOT"/.venv|"$ROOT"/.venv-*) ;;
  *) source ./mcn_env.sh ;;
esac

DEMO_WEIGHTS="demo/mcn_demo.safetensors"
OUT="${OUT:-demo_out}"
IMAGES="${IMAGES:-100}"
SEED="${SEED:-7}"
RATE_FACTOR="${RATE_FACTOR:-1}"
SCORE="${SCORE:-0.05}"
WEIGHTS="${WEIGHTS:-}"
BAG="${BAG:-}"
TRAIN="${TRAIN:-}"
RECORD="${RECORD:-}"

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

if [ -n "$TRAIN" ] && [ "$TRAIN" != "0" ]; then
  [ -z "$WEIGHTS" ] || die "TRAIN=1 makes $DEMO_WEIGHTS; leave WEIGHTS unset"
  say "training the demo weights from scratch (this takes long on a CPU; a killed run resumes)"
  python bench/demo_weights.py --out "$DEMO_WEIGHTS"
fi

if [ -n "$RECORD" ] && [ "$RECORD" != "0" ] && { [ -n "$WEIGHTS" ] || [ -n "$BAG" ]; }; then
  die "RECORD=1 records the demo itself (demo weights, synthetic bag): leave WEIGHTS and BAG unset"
fi

if [ -z "$WEIGHTS" ]; then
  WEIGHTS="$DEMO_WEIGHTS"
  if [ ! -f "$WEIGHTS" ]; then
    printf '[demo] error: the demo weights %s are missing. Make them (trains from scratch) with:\n' "$DEMO_WEIGHTS" >&2
    printf '\n    make demo TRAIN=1\n\n[demo] or run the demo on weights of your own: make demo WEIGHTS=path/to/weights.safetensors\n' >&2
    exit 1
  fi
elif [ -d "$WEIGHTS" ]; then
  die "WEIGHTS=$WEIGHTS is a folder: name the .safetensors file in it"
elif [ ! -f "$WEIGHTS" ]; then
  die "weights file $WEIGHTS does not exist"
fi

# The demo's node and player talk on this machine only, in their own ROS domain unless one is chosen.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
if [ -z "${ROS_DOMAIN_ID:-}" ]; then  # claimed as mcn_ros/ros/domain.py claims one: no other run shares it
  for offset in $(seq 0 99); do
    domain=$(( 1 + ($$ + offset) % 100 ))
    exec {DOMAIN_LOCK}>>"${TMPDIR:-/tmp}/mcn_ros_domain_$domain.lock"
    if flock -n "$DOMAIN_LOCK"; then export ROS_DOMAIN_ID=$domain; break; fi
    exec {DOMAIN_LOCK}>&-
  done
  [ -n "${ROS_DOMAIN_ID:-}" ] || die "every ROS domain from 1 to 100 is held by another run here"
fi
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

if [ -z "$BAG" ]; then
  DATA="$OUT/synthetic_val_seed${SEED}_${IMAGES}"
  BAG="$OUT/synthetic_val.bag"
  if [ ! -f "$DATA/annotations/instances_val.json" ]; then
    say "writing $IMAGES synthetic validation images (128x128, seed $SEED) to $DATA"
    rm -rf "$DATA"
    python -c "from mcn_training.synthetic import generate_dataset; \
generate_dataset('$DATA.tmp', $IMAGES, $SEED, (128, 128), split='val', first_id=1)"
    mv "$DATA.tmp" "$DATA"
  fi
  say "writing the camera bag $BAG (sensor_msgs/Image at 10 Hz, ground truth inside)"
  python -m mcn_ros.bag make --coco "$DATA" --split val --out "$BAG" --rate 10 --overwrite
elif [ ! -d "$BAG" ]; then
  die "bag $BAG does not exist (a rosbag2 folder)"
fi

say "node + replay (lockstep, then x$RATE_FACTOR the recorded rate) + evaluation, ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
python -m mcn_ros.bag run --bag "$BAG" --weights "$WEIGHTS" --out "$OUT/run" --overwrite \
  --rate-factor "$RATE_FACTOR" --param "score_threshold=$SCORE" --param "pose_score_threshold=$SCORE"
if [ -n "$RECORD" ] && [ "$RECORD" != "0" ]; then
  cp "$OUT/run/report.json" bench/results/replay_synthetic.json
  cp "$OUT/run/report.md" bench/results/replay_synthetic.md
  say "recorded bench/results/replay_synthetic.json and .md"
fi
say "done. Report: $OUT/run/report.md (figures: report.json; plots: latency.png, per_class.png, frames.png;"
say "video: replay.mp4); output bags and per-frame records in $OUT/run/lockstep and $OUT/run/rate; node log"
say "in $OUT/run/node.log"
