#!/usr/bin/env bash
# Smoke test of what an operator ships, on a real Docker engine (docs/deployment.md has its output):
#   docker/smoke.sh           # both parts
#   docker/smoke.sh single    # build the CPU image; time a code-only rebuild; run it read-only as uid 10001;
#                             # wait healthy; generate a digit and denoise a photo, check both; stop it (exit 0)
#   docker/smoke.sh scale     # docker/compose.scale.yaml (CPU workers) through its load balancer: jobs and an
#                             # SSE stream through port 8000, a worker killed and Redis restarted mid-run,
#                             # every job accounted for
# Needs docker, docker-compose (v1, or COMPOSE="docker compose"), curl and python3 on the host. Where
# PyTorch's wheel index is unreachable, put the torch wheel in docker/wheels/ first (see the Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-diffusion-service:latest}
COMPOSE=${COMPOSE:-docker-compose}
PORT=${PORT:-8000}
work=$(mktemp -d)
cid=""
trap 'rm -rf "$work"; [ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*"; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
seconds() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }
# checks run with the image's own Python (numpy and Pillow are in it), reading files from $work
check() { chmod -R a+rX "$work"; docker run --rm -v "$work:/w:ro" --entrypoint /srv/.venv/bin/python "$IMAGE" -c "$1"; }
build() { local out; out=$(docker build -q -t "$IMAGE" . 2>&1) || { echo "$out"; fail "docker build"; }; }

wait_ready() {  # url, timeout seconds
  local began; began=$(date +%s.%N)
  for _ in $(seq "$2"); do
    if curl -sf "$1/readyz" >/dev/null; then echo "ready after $(seconds "$began") s"; return 0; fi
    sleep 1
  done
  fail "$1 not ready within $2 s"
}

single() {
  step "build the CPU image"
  local began; began=$(date +%s.%N)
  build
  echo "built in $(seconds "$began") s"
  step "rebuild after a code-only change (app/ touched)"
  cp app/__init__.py "$work/init.bak"
  echo "# smoke $(date +%s%N)" >>app/__init__.py
  began=$(date +%s.%N)
  build
  echo "rebuilt in $(seconds "$began") s"
  cp "$work/init.bak" app/__init__.py
  build
  step "image size"
  docker image inspect --format '{{.Size}}' "$IMAGE" | python3 -c "import sys; print(f'{int(sys.stdin.read()) / 1e9:.2f} GB')"

  step "run read-only with a tmpfs /tmp"
  cid=$(docker run -d --read-only --tmpfs /tmp -p "$PORT:8000" "$IMAGE")
  began=$(date +%s.%N)
  for _ in $(seq 120); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$cid")" = healthy ] && break
    sleep 1
  done
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$cid")" = healthy ] || { docker logs "$cid"; fail "not healthy"; }
  echo "healthy after $(seconds "$began") s; uid $(docker exec "$cid" id -u); root filesystem read-only: $(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$cid")"

  step "generate a digit"
  curl -sf "localhost:$PORT/v1/generate" -H 'content-type: application/json' -H 'Accept: image/png' \
    -d '{"class_label": 7, "seed": 1}' -o "$work/seven.png" || fail "generate"
  check "from PIL import Image; im = Image.open('/w/seven.png'); assert im.size == (28, 28), im.size; print('a', im.size, im.mode, 'PNG')"

  step "denoise a photo (the playground's sample cat, noised at sigma 25 by /v1/noise)"
  curl -sf "localhost:$PORT/ui/samples/cat.png" -o "$work/cat.png" || fail "sample photo"
  curl -sf "localhost:$PORT/v1/noise" -F file=@"$work/cat.png" -F sigma=25 -F seed=0 -H 'Accept: image/png' \
    -o "$work/noisy.png" || fail "noise"
  curl -sf "localhost:$PORT/v1/denoise" -F file=@"$work/noisy.png" -F sigma=25 -H 'Accept: image/png' \
    -o "$work/clean.png" || fail "denoise"
  check "
import numpy as np
from PIL import Image
clean, noisy, out = (np.asarray(Image.open(f'/w/{n}.png'), dtype=np.float64) for n in ('cat', 'noisy', 'clean'))
psnr = lambda a: 10 * np.log10(255 ** 2 / np.mean((a - clean) ** 2))
print(f'noisy {psnr(noisy):.2f} dB -> denoised {psnr(out):.2f} dB')
assert psnr(out) > psnr(noisy) + 5
"
  step "stop (SIGTERM, graceful)"
  began=$(date +%s.%N)
  docker stop "$cid" >/dev/null
  echo "stopped in $(seconds "$began") s, exit code $(docker inspect --format '{{.State.ExitCode}}' "$cid")"
  [ "$(docker inspect --format '{{.State.ExitCode}}' "$cid")" = 0 ] || fail "exit code"
  docker rm "$cid" >/dev/null
  cid=""
}

scale() {
  local compose="$COMPOSE -f docker/compose.scale.yaml -p diffusion-smoke --profile cpu"
  step "build the image the stack runs (compose would reuse an older one of the same tag)"
  build
  step "scale-out stack: load balancer, 2 API nodes, 2 CPU workers, Redis with AOF"
  $compose up -d --scale api=2 --scale worker-cpu=2 2>&1 | grep -E 'done|rror' | grep -v Creating || true
  $compose ps
  wait_ready "http://localhost:$PORT" 180

  step "20 jobs through the load balancer"
  local ids=()
  for i in $(seq 20); do
    ids+=("$(curl -sf "localhost:$PORT/v1/generate" -H 'content-type: application/json' -H 'Prefer: respond-async' \
      -d "{\"class_label\": $((i % 10)), \"steps\": 300, \"seed\": $i}" | json 'd["job_id"]')")
  done
  echo "accepted ${#ids[@]} jobs"
  # containers by service, not by name: docker-compose v1 names them <project>_api_1, v2 <project>-api-1
  local node=0
  for api in $($compose ps -q api); do
    node=$((node + 1))
    echo "api node $node took $(docker logs "$api" 2>&1 | grep -c 'POST /v1/generate') of them"
  done
  [ "$node" = 2 ] || fail "expected 2 API nodes, found $node"

  step "an event stream through the load balancer (unbuffered: events arrive while the job runs)"
  curl -sN "localhost:$PORT/v1/jobs/${ids[19]}/events" | python3 -c "
import sys, time
began, stamps = time.time(), []
for line in sys.stdin:
    if line.startswith('event: '):
        stamps.append((round(time.time() - began, 2), line[7:].strip()))
kinds = [k for _, k in stamps]
print(f'{len(stamps)} events; first at {stamps[0][0]} s, last ({kinds[-1]}) at {stamps[-1][0]} s')
assert kinds[-1] == 'succeeded' and stamps[0][0] < stamps[-1][0] - 1, stamps
" &
  local sse=$!

  step "kill a worker (SIGKILL) and restart Redis, mid-run"
  sleep 2
  local victim; victim=$($compose ps -q worker-cpu | head -1)
  [ -n "$victim" ] || fail "no worker-cpu container to kill"
  docker kill "$victim" >/dev/null
  echo "killed a worker-cpu container"
  $compose restart redis >/dev/null 2>&1
  echo "redis restarted"

  step "every accepted job accounted for"
  local began; began=$(date +%s)
  for _ in $(seq 300); do
    local states; states=$(for id in "${ids[@]}"; do curl -s "localhost:$PORT/v1/jobs/$id" | json 'd.get("status", d.get("detail", [{}])[0].get("type"))' 2>/dev/null || echo error; done | sort | uniq -c | tr '\n' ' ')
    echo "$states" | grep -qE '^ *20 succeeded *$' && break
    sleep 2
  done
  echo "after $(( $(date +%s) - began )) s: $states"
  wait "$sse" || fail "event stream"
  echo "$states" | grep -qE '^ *20 succeeded *$' || { $compose logs --tail 50; fail "jobs lost"; }
  $compose down -v >/dev/null 2>&1
  echo "stack removed"
}

case "${1:-all}" in
  single) single ;;
  scale) scale ;;
  all) single; scale ;;
  *) echo "usage: $0 [single|scale]"; exit 2 ;;
esac
step "smoke test passed"
