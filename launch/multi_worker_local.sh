#!/usr/bin/env bash
# Runs one MultiWorkerMirroredStrategy job as N worker processes on this machine, on
# 127.0.0.1 ports (for demos and tests; a real cluster uses slurm.sbatch or
# tfjob.yaml). Worker 0 is the chief: it alone writes into --model_dir.
#
#   bash launch/multi_worker_local.sh 2 --train_steps=100 [more train.py flags]
#
# Each worker's output is prefixed with [worker i]. The exit code is the first
# non-zero exit code of a worker (0 when all succeed).
set -uo pipefail
num_workers=${1:?usage: $0 NUM_WORKERS [train.py flags...]}
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-python}

# N free loopback ports, chosen by the OS.
hosts=$("$python" - "$num_workers" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in socks))
for s in socks:
    s.close()
PY
)

pids=()
for ((i = 0; i < num_workers; i++)); do
  "$python" train.py --strategy=multi_worker --worker_hosts="$hosts" --task_index="$i" "$@" \
    > >(sed -u "s/^/[worker $i] /") 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM

status=0
for pid in "${pids[@]}"; do
  wait "$pid"
  code=$?
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
  fi
done
wait  # The output filters.
exit "$status"
