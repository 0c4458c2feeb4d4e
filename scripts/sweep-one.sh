#!/usr/bin/env bash
# One seed of a seed sweep: train, evaluate OOD under every configured protocol, measure NC.
# Runs are independent jobs, so any scheduler can run this once per seed (scripts/sweep.slurm
# for SLURM arrays; `parallel scripts/sweep-one.sh {} ::: 0 1 2` with GNU parallel), then:
#   oodnc report --runs 'runs/seed-*'
#
# Usage: scripts/sweep-one.sh SEED [PROFILE]          (PROFILE: demo | coursework | ci; default demo)
# Environment (all optional):
#   OODNC_BIN        the oodnc binary (default: `oodnc` on PATH, else target/release/oodnc)
#   OODNC_RUNS       runs folder (default runs); each seed writes only its own runs/<name>-SEED/
#   OODNC_SWEEP_NAME run name prefix (default seed)
#   OODNC_DATA_ROOT  data root (default: the profile's)
#   OODNC_BOOTSTRAP  bootstrap replicates for the intervals (default 200)
# A job that is re-run (requeued, preempted) resumes its run from the last completed epoch;
# a finished run is not trained again, and its tables are merged, never shrunk.
set -euo pipefail
seed=${1:?usage: scripts/sweep-one.sh SEED [PROFILE]}
profile=${2:-${OODNC_PROFILE:-demo}}
case $seed in *[!0-9]* | '') echo "error: SEED must be a non-negative integer, got '$seed'" >&2; exit 2 ;; esac
bin=${OODNC_BIN:-}
if [[ -z $bin ]]; then
  if command -v oodnc >/dev/null 2>&1; then bin=oodnc; else bin=target/release/oodnc; fi
fi
runs=${OODNC_RUNS:-runs}
name=${OODNC_SWEEP_NAME:-seed}-$seed
data=()
[[ -n ${OODNC_DATA_ROOT:-} ]] && data=(--data-root "$OODNC_DATA_ROOT")
if [[ -f $runs/$name/config.toml ]]; then
  echo "== $name: resuming (or already complete)"
  "$bin" train --run "$name" --runs "$runs" --resume
else
  echo "== $name: training ($profile, seed $seed)"
  "$bin" train --profile "$profile" --seed "$seed" --run "$name" --runs "$runs" "${data[@]}"
fi
"$bin" ood --run "$name" --runs "$runs" --bootstrap "${OODNC_BOOTSTRAP:-200}"
"$bin" nc --run "$name" --runs "$runs"
echo "== $name: done"
