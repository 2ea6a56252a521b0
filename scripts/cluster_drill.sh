#!/usr/bin/env bash
# Node loss on a two-node Ray cluster, simulated on one machine.
#
#     bash scripts/cluster_drill.sh [LOGDIR]
#
# Python is $PYTHON (default: `python` on PATH) and `ray` the one installed beside it, so
# the drill runs from a virtual environment that is not activated:
# `PYTHON=.venv/bin/python bash scripts/cluster_drill.sh`.
#
# A head node (2 CPUs) and a worker node (2 CPUs) start with `ray start`; PPO trains with
# 3 env runners of 1 CPU joined by --address, so at least one runner lands on the worker;
# after a few iterations the worker node's raylet is killed. The head cannot host the lost
# runners' restarts, so each is given up after restart_timeout_s (15 s) and the run goes on
# with the runners that are left (or ends with exit 3 when none is). The drill prints how
# long after the kill training moved on, then stops the cluster and checks that no Ray
# process is left. Exit 0 when all of that held.
set -u
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token       # every process that joins the cluster carries the token
LOGDIR=${1:-$(mktemp -d)/drill}
PYTHON=${PYTHON:-python}
RAY=("$(dirname "$(command -v "$PYTHON")")/ray")          # the console script beside that Python
[ -x "${RAY[0]}" ] || RAY=("$PYTHON" -m ray.scripts.scripts)  # the same CLI, where there is none
PORT=6390
WORKER_NM_PORT=6401

cleanup() { "${RAY[@]}" stop --force >/dev/null 2>&1; }
trap cleanup EXIT
"${RAY[@]}" stop --force >/dev/null 2>&1
"${RAY[@]}" start --head --port=$PORT --num-cpus=2 --disable-usage-stats --include-dashboard=false >/dev/null || exit 1
"${RAY[@]}" start --address=127.0.0.1:$PORT --num-cpus=2 --node-manager-port=$WORKER_NM_PORT --disable-usage-stats >/dev/null || exit 1

"$PYTHON" scripts/train.py --algo ppo --env CartPole-v1 --address 127.0.0.1:$PORT --num-env-runners 3 \
    --set restart_timeout_s=15 --set sample_timeout_s=20 --stop-timesteps 150000 --quiet --logdir "$LOGDIR" \
    > "$LOGDIR.out" 2> "$LOGDIR.err" &
TRAIN=$!
until [ -f "$LOGDIR/progress.jsonl" ] && [ "$(wc -l < "$LOGDIR/progress.jsonl")" -ge 5 ]; do
    kill -0 $TRAIN 2>/dev/null || { echo "train.py ended before the kill:"; cat "$LOGDIR.err"; exit 1; }
    sleep 0.5
done
RAYLET=$(pgrep -f "raylet.*node_manager_port=$WORKER_NM_PORT" | head -1)
ROWS_AT_KILL=$(wc -l < "$LOGDIR/progress.jsonl")
now() { "$PYTHON" -c "import time; print(time.time())"; }
KILLED_AT=$(now)
kill -9 "$RAYLET"
echo "killed the worker node's raylet (pid $RAYLET) after $ROWS_AT_KILL iterations"

# Training must move on (a new progress row after the lost runners were given up) or end.
DEADLINE=$("$PYTHON" -c "print($KILLED_AT + 20 + 15 + 30)")   # sample_timeout_s + restart_timeout_s + slack
MOVED=""
while kill -0 $TRAIN 2>/dev/null; do
    if [ -z "$MOVED" ] && grep -q '"num_env_runners_lost": [1-9]' "$LOGDIR/progress.jsonl"; then
        MOVED=$("$PYTHON" -c "print(round($(now) - $KILLED_AT, 1))")
        echo "training went on without the lost runners $MOVED s after the kill"
        kill -INT $TRAIN                 # enough: stop the run (checkpoint, summary, exit 130)
    fi
    if [ -z "$MOVED" ] && "$PYTHON" -c "import sys; sys.exit(0 if $(now) > $DEADLINE else 1)"; then
        echo "FAIL: no progress and no exit within the deadline after the kill"; kill -9 $TRAIN; exit 1
    fi
    sleep 0.5
done
wait $TRAIN
RC=$?
echo "train.py exit code $RC; stderr:"
sed 's/^/    /' "$LOGDIR.err"
tail -1 "$LOGDIR/progress.jsonl" | "$PYTHON" -c "import json,sys; r=json.load(sys.stdin); \
print('last row: iteration', r['iteration'], 'runners lost', r['num_env_runners_lost'], 'restarts', r['num_env_runner_restarts'])"
"${RAY[@]}" stop --force >/dev/null 2>&1
sleep 3
LEFT=$(pgrep -f "ray::|raylet|gcs_server" | wc -l)
echo "Ray processes left after ray stop: $LEFT"
[ -n "$MOVED" ] && [ "$RC" = 130 ] && [ "$LEFT" = 0 ]
