#!/usr/bin/env bash
# Cluster DNS benchmark: dnsperf against Portico's DNS server and against NSD,
# one after the other, on the same generated zone (10,000 ClusterIP Services,
# 1,000 headless Services with 3 endpoints, 100,000 pods) and the same query
# mix (80 % A for existing names, 10 % SRV, 10 % NXDOMAIN).
#
# Servers run on core 0 (taskset -c 0), dnsperf on core 1. Both servers stay
# up; each round loads one then the other (alternating which goes first);
# the summary gives medians and the Portico/NSD ratio of each round.
# Results go in docs/benchmarks.md ("Cluster DNS").
#
#   scripts/bench-dns.sh                 # 6 rounds of 10 s per server
#   ROUNDS=10 DURATION=20 scripts/bench-dns.sh
#
# Needs dnsperf and nsd (Debian packages; `make deps` installs them) and a
# release build of the bench server (built here). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10}
PORTICO_PORT=${PORTICO_PORT:-5300}
NSD_PORT=${NSD_PORT:-5301}
# Clients and outstanding queries: enough to keep one server core busy.
DNSPERF_OPTS=${DNSPERF_OPTS:--c 8 -q 200}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

for tool in dnsperf nsd taskset dig; do
  command -v "$tool" >/dev/null || { echo "bench-dns: $tool is missing (make deps)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/portico-bench-dns.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building the bench server (release)"
cargo build --release --quiet -p portico-dns --example bench_server
bin=target/release/examples/bench_server
"$bin" --no-serve --zone-file "$work/cluster.local.zone" --queries "$work/queries.txt"

cat >"$work/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work"
  pidfile: "$work/nsd.pid"
  database: ""
  xfrdfile: "$work/xfrd.state"
  zonelistfile: "$work/zone.list"
  logfile: "$work/nsd.log"
  verbosity: 0
  hide-version: yes
  rrl-ratelimit: 0
  minimal-responses: yes
remote-control:
  control-enable: no
zone:
  name: "cluster.local"
  zonefile: "$work/cluster.local.zone"
EOF
nsd-checkzone cluster.local "$work/cluster.local.zone" >/dev/null

# CPU ticks (user + system) of processes; /proc/PID/stat after the ")" of
# the command name, which may hold spaces ("nsd: server 1").
ticks() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}
rss_kib() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}
wait_for() { # port
  for _ in $(seq 100); do
    dig @127.0.0.1 -p "$1" +time=1 +tries=1 svc-1.ns-1.svc.cluster.local A +short 2>/dev/null | grep -q . && return 0
    sleep 0.2
  done
  echo "bench-dns: no answer on port $1" >&2
  exit 1
}
hz=$(getconf CLK_TCK)

# run NAME PORT PIDS... : warm up, measure, append a result line.
run() {
  local name=$1 port=$2
  shift 2
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l 2 $DNSPERF_OPTS >/dev/null 2>&1
  local t0 t1 out
  t0=$(ticks "$@")
  out=$(taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$DURATION" $DNSPERF_OPTS 2>&1)
  t1=$(ticks "$@")
  local qps completed lost lat rss
  qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
  completed=$(awk '/Queries completed/ {print $3}' <<<"$out")
  lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
  lat=$(awk '/Average Latency/ {print $4}' <<<"$out")
  rss=$(rss_kib "$@")
  local cpu_us
  cpu_us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v q="$completed" 'BEGIN {printf "%.2f", t / hz * 1e6 / q}')
  printf '%s %s %s %s %s %s\n' "$name" "$qps" "$lat" "$lost" "$cpu_us" "$rss" | tee -a "$work/results"
  grep -E "Response codes" <<<"$out" | sed "s/^/  $name: /"
}

# Both servers run on the server core for the whole benchmark (an idle one
# costs nothing); the rounds alternate between them, in alternating order, so
# a change in other load on the machine falls on both.
taskset -c "$SERVER_CPU" "$bin" --listen "127.0.0.1:$PORTICO_PORT" 2>"$work/portico.log" &
portico=$!
pids+=("$portico")
taskset -c "$SERVER_CPU" nsd -d -c "$work/nsd.conf" >"$work/nsd.out" 2>&1 &
nsd=$!
pids+=("$nsd")
wait_for "$PORTICO_PORT"
wait_for "$NSD_PORT"
nsd_pids=$(pgrep -f "nsd -d -c $work/nsd.conf" | paste -sd' ')

echo "== $ROUNDS rounds of $DURATION s per server; servers on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU ($DNSPERF_OPTS)"
echo "server qps avg_latency_s lost cpu_us_per_query rss_kib"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    run portico "$PORTICO_PORT" "$portico"
    run nsd "$NSD_PORT" $nsd_pids
  else
    run nsd "$NSD_PORT" $nsd_pids
    run portico "$PORTICO_PORT" "$portico"
  fi
done
kill -INT "$portico" || true
kill "$nsd" || true

echo "== medians over $ROUNDS rounds"
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for name in portico nsd; do
  for col in 2 3 5 6; do
    awk -v n="$name" -v c="$col" '$1 == n {print $c}' "$work/results" | median
  done | paste -sd' ' | sed "s/^/$name /"
done | tee "$work/medians"
awk '
  $1 == "portico" {pq = $2; pc = $4}
  $1 == "nsd" {nq = $2; nc = $4}
  END {
    printf "Portico/NSD queries per second (medians): %.1f %%\n", 100 * pq / nq
    printf "NSD/Portico CPU per query (medians):      %.1f %%\n", 100 * nc / pc
  }' "$work/medians"
# Each round runs the two servers back to back: the ratio within a round is
# the least disturbed by other load on the machine.
awk '$1 == "portico" {p[++i] = $2} $1 == "nsd" {n[++j] = $2} END {for (k = 1; k <= i; k++) printf "%.1f\n", 100 * p[k] / n[k]}' "$work/results" \
  | tee "$work/ratios" | paste -sd' ' | sed 's/^/Portico\/NSD queries per second by round (%): /'
echo "median of the rounds' ratios: $(median <"$work/ratios") %"
echo "(portico: $(grep -m1 services "$work/portico.log"))"
