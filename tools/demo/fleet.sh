#!/usr/bin/env bash
# xdpfw fleet demo: a control plane with its embedded etcd (TLS, client
# certificates, etcd auth on), two web hosts each enrolled (an etcd
# identity allowed only its own keys) and running xdpfw-agent, a client and
# an attacker, all network namespaces on one bridge. The operator writes a
# rule set through the API and rolls it out in two waves; the attacker's
# packets are dropped on both hosts, the client's pass, and the fleet's
# counters show it. Last, web-1's identity tries to rewrite web-2's rules
# and etcd refuses.
# Run as root from the repository after `make build` (or `make demo`).
# Everything it makes is named xdpfw-demo-* and removed on exit, failure
# and Ctrl-C included.
set -euo pipefail

cd "$(dirname "$0")/../.."

BIN=${BIN:-bin}
RULES=tools/demo/fleet-rules.yaml
P=xdpfw-demo
LAN=$P-lan CP=$P-cp CLIENT=$P-client ATTACKER=$P-attacker
HOSTS=(web-1 web-2)
PIN_ROOT=/sys/fs/bpf/xdpfw-demo
CP_V4=198.18.0.10
declare -A V4=([$CP]=198.18.0.10 [$CLIENT]=198.18.0.1 [$ATTACKER]=198.18.0.66 [$P-web-1]=198.18.0.21 [$P-web-2]=198.18.0.22)
declare -A V6=([$CP]=2001:db8::10 [$CLIENT]=2001:db8::1 [$ATTACKER]=2001:db8::66 [$P-web-1]=2001:db8::21 [$P-web-2]=2001:db8::22)
TOKEN=demo-operator-token-0123456789
ADMIN_TOKEN=demo-admin-token-0123456789
unexpected=0
pids=()

bold='' plain=''
if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# on NS CMD...: run CMD in NS's network namespace only (it keeps the root
# /sys/fs/bpf; `ip netns exec` would give it a private one).
on() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

# ctl ARGS...: xdpfwctl against the API, from the client's namespace.
ctl() { on "$CLIENT" "$BIN/xdpfwctl" "$@" --server "http://$CP_V4:8080" --token "$TOKEN"; }
admin() { on "$CLIENT" "$BIN/xdpfwctl" "$@" --server "http://$CP_V4:8080" --token "$ADMIN_TOKEN"; }

cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	pids=()
	for h in "${HOSTS[@]}"; do
		if [[ -d $PIN_ROOT/$h/eth0 && -e /run/netns/$P-$h ]]; then
			on "$P-$h" "$BIN/xdpfwctl" local detach --iface eth0 --pin-path "$PIN_ROOT/$h" >/dev/null 2>&1 || true
		fi
	done
	rm -rf "$PIN_ROOT" || true
	for ns in "$CP" "$CLIENT" "$ATTACKER" "$P-web-1" "$P-web-2" "$LAN"; do
		if [[ -e /run/netns/$ns ]]; then
			ip netns delete "$ns" || true
		fi
	done
	if [[ -n ${tmp:-} ]]; then
		rm -rf "$tmp" || true
	fi
}

# --- preflight -------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root: the demo makes network namespaces and attaches XDP programs"
for b in xdpfwctl xdpfw-agent xdpfw-controlplane; do
	[[ -x $BIN/$b ]] || die "$BIN/$b not found: run \`make build\` first (or \`make demo\`)"
done
for tool in ip nsenter go; do
	command -v "$tool" >/dev/null || die "$tool not found (Debian: iproute2, util-linux, golang)"
done
mountpoint -q /sys/fs/bpf || die "no BPF filesystem at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf (or \`make bpffs\`)"

cleanup # leftovers of an earlier run that was killed hard
trap cleanup EXIT
trap 'exit 130' INT TERM

tmp=$(mktemp -d /tmp/xdpfw-demo.XXXXXX)
go build -o "$tmp/probe" ./tools/demo/probe

# --- the network -------------------------------------------------------------
say "the fleet: network namespaces on one bridge"
ip netns add "$LAN"
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
i=0
for ns in "$CP" "$CLIENT" "$ATTACKER" "$P-web-1" "$P-web-2"; do
	i=$((i + 1))
	ip netns add "$ns"
	on "$ns" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad'
	ip -n "$ns" link set lo up
	ip link add eth0 netns "$ns" type veth peer name "port$i" netns "$LAN"
	ip -n "$LAN" link set "port$i" master br0 up
	ip -n "$ns" addr add "${V4[$ns]}/24" dev eth0
	ip -n "$ns" addr add "${V6[$ns]}/64" dev eth0 nodad
	ip -n "$ns" link set eth0 up
done
for ns in "$CP" "$CLIENT" "$ATTACKER" "$P-web-1" "$P-web-2"; do
	for _ in $(seq 100); do
		ip -n "$ns" -6 route show table local dev eth0 | grep -q '^multicast ff00::/8' && break
		sleep 0.05
	done
done
printf '  control plane  %s  (API :8080, embedded etcd https :2379)\n' "${V4[$CP]}"
printf '  client         %s  (stands for the office)\n' "${V4[$CLIENT]}"
printf '  attacker       %s\n' "${V4[$ATTACKER]}"
printf '  web-1, web-2   %s, %s  (ssh tcp/22, web tcp/80, DNS udp/53; an agent each)\n' "${V4[$P-web-1]}" "${V4[$P-web-2]}"

# --- the control plane and the agents ------------------------------------------
say "start xdpfw-controlplane (embedded etcd: TLS, client certificates, auth on)"
cat >"$tmp/tokens.yaml" <<TOKENS
tokens:
  - {name: demo-operator, role: operator, token: $TOKEN}
  - {name: demo-admin, role: admin, token: $ADMIN_TOKEN}
TOKENS
# The API is plain HTTP on the demo's private bridge (--insecure-http);
# give it --tls-cert and --tls-key anywhere else.
nsenter --net="/run/netns/$CP" "$BIN/xdpfw-controlplane" --name cp-1 --listen "$CP_V4:8080" --insecure-http \
	--tokens-file "$tmp/tokens.yaml" --data-dir "$tmp/etcd" \
	--etcd-listen-client "https://$CP_V4:2379" --etcd-listen-peer "https://127.0.0.1:2380" \
	--rollout-interval 250ms --log-level warn >"$tmp/cp.out" 2>"$tmp/cp.log" &
pids+=($!)
for _ in $(seq 300); do
	grep -q 'ready' "$tmp/cp.out" 2>/dev/null && break
	sleep 0.1
done
grep -q 'ready' "$tmp/cp.out" || { cat "$tmp/cp.log" >&2; die "the control plane did not start"; }
sed 's/^/  /' "$tmp/cp.out"

say "enroll web-1 and web-2 (xdpfwctl hosts enroll, admin): an etcd identity each, and the labels that pick their rules"
for h in "${HOSTS[@]}"; do
	admin hosts enroll "$h" --labels role=web --out "$tmp/enroll/$h" | sed 's/^/  /'
done

say "start an xdpfw-agent on each web host, with its enrollment's agent.yaml"
declare -A agent_pid
for h in "${HOSTS[@]}"; do
	nsenter --net="/run/netns/$P-$h" "$BIN/xdpfw-agent" --config "$tmp/enroll/$h/agent.yaml" \
		--iface eth0 --pin-path "$PIN_ROOT/$h" --telemetry-interval 1s --lease-ttl 5s \
		--metrics-addr 127.0.0.1:9464 --log-level warn 2>"$tmp/agent-$h.log" &
	agent_pid[$h]=$!
	pids+=($!)
	nsenter --net="/run/netns/$P-$h" "$tmp/probe" serve tcp/22 tcp/80 udp/53 &
	pids+=($!)
done

# agent_failed HOST WHAT: stop the demo with what went wrong and the end of
# the agent's log.
agent_failed() {
	printf 'demo: %s\n  the end of its log (%s):\n' "$2" "$tmp/agent-$1.log" >&2
	tail -n 20 "$tmp/agent-$1.log" | sed 's/^/  | /' >&2
	exit 1
}

# wait_agent HOST: its agent runs and its status came up, and says its data
# plane is loaded; else the demo stops at once, with the agent's error.
wait_agent() {
	local h=$1 table state
	for _ in $(seq 150); do
		if ! kill -0 "${agent_pid[$h]}" 2>/dev/null; then
			agent_failed "$h" "xdpfw-agent on $h exited"
		fi
		if table=$(ctl get host "$h" 2>/dev/null); then
			state=$(sed -n 's/^state: *//p' <<<"$table")
			case $state in
			failed) agent_failed "$h" "xdpfw-agent on $h runs but cannot filter: $(sed -n 's/^reason: *//p' <<<"$table")" ;;
			'' | lost | 'no status') ;;
			*) return 0 ;;
			esac
		fi
		sleep 0.1
	done
	agent_failed "$h" "xdpfw-agent on $h did not report a status within 15 s"
}
for h in "${HOSTS[@]}"; do
	wait_agent "$h"
done
ctl get hosts

# --- traffic ---------------------------------------------------------------------
# probe FROM KIND ADDR PORT: one TCP connection or UDP datagram; prints
# passed or dropped.
probe() {
	local rc=0
	on "$1" "$tmp/probe" "$2" "$3" "$4" || rc=$?
	case $rc in 0) echo passed ;; 1) echo dropped ;; *) echo error ;; esac
}

# FROM KIND HOST PORT EXPECTED-AFTER WHY
FLOWS=(
	"$CLIENT tcp web-1 80 passed no rule matches: a deny list passes the rest"
	"$CLIENT tcp web-1 22 passed ssh-from-office"
	"$CLIENT udp web-2 53 passed no rule matches"
	"$CLIENT tcp web-2 22 passed ssh-from-office"
	"$ATTACKER tcp web-1 80 dropped block-attackers"
	"$ATTACKER tcp web-1 22 dropped block-attackers"
	"$ATTACKER udp web-2 53 dropped block-attackers"
	"$ATTACKER tcp web-2 80 dropped block-attackers"
)

run_flows() { # $1 = "expect" to check the outcomes against the rules
	local from kind host port want why got
	printf '  %-28s %-8s %s\n' FLOW RESULT "${1:+EXPECTED, WHY}"
	for f in "${FLOWS[@]}"; do
		read -r from kind host port want why <<<"$f"
		got=$(probe "$from" "$kind" "${V4[$P-$host]}" "$port")
		label="${from#"$P-"} $kind/$port -> $host"
		if [[ -z ${1:-} ]]; then
			printf '  %-28s %-8s\n' "$label" "$got"
			[[ $got == passed ]] || { unexpected=1; printf '    ^ unexpected: nothing filters yet\n'; }
		else
			printf '  %-28s %-8s %s, %s\n' "$label" "$got" "$want" "$why"
			[[ $got == "$want" ]] || { unexpected=1; printf '    ^ unexpected: want %s\n' "$want"; }
		fi
	done
}

say "1. no rule set yet: everything gets through"
for _ in $(seq 50); do # until the services listen
	[[ $(probe "$CLIENT" tcp "${V4[$P-web-2]}" 80) == passed ]] && break
	sleep 0.1
done
run_flows

say "2. the operator writes the rule set through the API (xdpfwctl apply)"
sed 's/^/  | /' "$RULES"
ctl apply -f "$RULES"

say "3. and rolls it out in two waves: one host, then all (xdpfwctl rollout start)"
out=$(ctl rollout start web --version 1 --waves 1,100% --pause 2s)
echo "$out"
id=$(sed -n 's/^rollout \([^:]*\):.*/\1/p' <<<"$out")
[[ -n $id ]] || die "no rollout id in: $out"
# Show the rollout each time it moves, until it ends.
state= shown=
for _ in $(seq 300); do
	table=$(ctl rollout status "$id")
	state=$(sed -n 's/^state: *\([a-z]*\).*/\1/p' <<<"$table")
	if [[ $table != "$shown" ]]; then
		shown=$table
		printf '\n' && sed 's/^/  /' <<<"$table"
	fi
	[[ $state == succeeded || $state == halted || $state == aborted ]] && break
	sleep 0.2
done
[[ $state == succeeded ]] || die "the rollout ended $state"

say "4. the same traffic again: the attacker is dropped on both hosts, the client passes"
run_flows expect

say "5. what the fleet counted (xdpfwctl stats; telemetry every second)"
sleep 2.5
ctl stats
echo
ctl get hosts

say "6. web-1's identity tries to give web-2 an empty desired state (xdpfwctl etcd, as web-1): etcd refuses"
c=$tmp/enroll/web-1
if out=$(on "$P-web-1" "$BIN/xdpfwctl" etcd desire --host web-2 --none --endpoints "https://$CP_V4:2379" \
	--cert "$c/etcd-client.crt" --key "$c/etcd-client.key" --cacert "$c/etcd-ca.crt" 2>&1); then
	unexpected=1
	printf '  %s\n    ^ unexpected: web-1 rewrote web-2'"'"'s desired state\n' "$out"
else
	printf '  refused: %s\n' "$(tail -n 1 <<<"$out")"
fi

say "cleaning up (agents, control plane, namespaces, pins)"
cleanup
trap - EXIT
if [[ $unexpected -ne 0 ]]; then
	die "some traffic did not do what the rules say (see above)"
fi
echo "done."
