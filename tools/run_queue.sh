#!/usr/bin/env bash
# Run long experiment commands one after the other (one "stream" of training on a shared machine).
#
#   nohup tools/run_queue.sh LOGDIR "experiments run A --preset cpu" "experiments try B --set ..." &
#
# Each argument is the argument list of `python -m crc_core.experiments`, shell-quoted (the queue adds
# `--threads 1 --no-progress`), logged to LOGDIR/<n>-<first words>.log. Before each start the queue
# waits until the code is committed (no tracked change outside results/), so every stored result
# names the commit it was made with (provenance git_commit, git_dirty false). A failing command is
# logged and the queue goes on with the next.
set -u
logdir=$1; shift
mkdir -p "$logdir"
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
n=0
for cmd in "$@"; do
  n=$((n + 1))
  while [ -n "$(git status --porcelain --untracked-files=no -- . ':(exclude)results')" ]; do
    sleep 20
  done
  name=$(echo "$cmd" | awk '{print $2}')
  log="$logdir/$n-$name.log"
  echo "$(date -u +%FT%TZ) start: $cmd" >> "$logdir/queue.log"
  eval "nice -n 10 .venv/bin/python -m crc_core.experiments $cmd --threads 1 --no-progress" \
    > "$log" 2>&1
  echo "$(date -u +%FT%TZ) exit $?: $cmd" >> "$logdir/queue.log"
done
