#!/usr/bin/env bash
# xdpfw demo: two namespace hosts joined by a veth pair, the firewall on the
# server's interface, real traffic before and after, and what it counted.
# Run as root from the repository after `make build` (or just `make demo`).
# Everything it makes is named xdpfw-demo-* and removed on exit, failure
# and Ctrl-C included.
set -euo pipefail

cd "$(dirname "$0")/../.."

CTL=${XDPFWCTL:-bin/xdpfwctl}
RULES=tools/demo/rules.yaml
CLIENT=xdpfw-demo-client
SERVER=xdpfw-demo-server
PIN_ROOT=/sys/fs/bpf/xdpfw-demo
PIN=$PIN_ROOT/server # the server's --pin-path; its objects go in $PIN/eth0
CLIENT_V4=198.18.0.1 CLIENT_V6=2001:db8::1
SERVER_V4=198.18.0.2 SERVER_V6=2001:db8::2
unexpected=0

bold='' plain=''
if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# on HOST CMD...: run CMD in HOST's network namespace only, so that it sees
# the root /sys/fs/bpf (`ip netns exec` would give it a private one).
on() { local host=$1; shift; nsenter --net="/run/netns/$host" "$@"; }

ctl() { on "$SERVER" "$CTL" local "$1" --iface eth0 --pin-path "$PIN" "${@:2}"; }

# cleanup removes everything the demo made; it never fails, so that it can
# run on any exit and before a run (leftovers of one that was killed hard).
cleanup() {
	if [[ -n ${server_pid:-} ]]; then
		kill "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
		server_pid=
	fi
	if [[ -d $PIN/eth0 && -e /run/netns/$SERVER ]]; then
		ctl detach >/dev/null || true
	fi
	rm -rf "$PIN_ROOT" || true
	for ns in "$CLIENT" "$SERVER"; do
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
[[ -x $CTL ]] || die "$CTL not found: run \`make build\` first (or \`make demo\`)"
for tool in ip nsenter ping go; do
	command -v "$tool" >/dev/null || die "$tool not found (Debian: iproute2, util-linux, iputils-ping, golang)"
done
mountpoint -q /sys/fs/bpf || die "no BPF filesystem at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf (or \`make bpffs\`)"

cleanup # leftovers of an earlier run that was killed hard
trap cleanup EXIT
trap 'exit 130' INT TERM

tmp=$(mktemp -d /tmp/xdpfw-demo.XXXXXX)
go build -o "$tmp/probe" ./tools/demo/probe

# --- the hosts -------------------------------------------------------------
say "two hosts: network namespaces joined by a veth pair"
for ns in "$CLIENT" "$SERVER"; do
	ip netns add "$ns"
	# No duplicate address detection: IPv6 addresses work at once.
	on "$ns" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad'
	ip -n "$ns" link set lo up
done
ip link add eth0 netns "$CLIENT" type veth peer name eth0 netns "$SERVER"
ip -n "$CLIENT" addr add "$CLIENT_V4/24" dev eth0
ip -n "$CLIENT" addr add "$CLIENT_V6/64" dev eth0 nodad
ip -n "$SERVER" addr add "$SERVER_V4/24" dev eth0
ip -n "$SERVER" addr add "$SERVER_V6/64" dev eth0 nodad
ip -n "$CLIENT" link set eth0 up
ip -n "$SERVER" link set eth0 up
# IPv6 works once the kernel has given eth0 its link-local address and
# multicast route, a moment after carrier: wait for that.
for ns in "$CLIENT" "$SERVER"; do
	for _ in $(seq 100); do
		ip -n "$ns" -6 route show table local dev eth0 | grep -q '^multicast ff00::/8' && break
		sleep 0.05
	done
done
printf '  client  %-18s eth0  %s/24  %s/64\n' "$CLIENT" "$CLIENT_V4" "$CLIENT_V6"
printf '  server  %-18s eth0  %s/24  %s/64\n' "$SERVER" "$SERVER_V4" "$SERVER_V6"
printf '  the server runs ssh (tcp/22), a web server (tcp/80), DNS (udp/53) and a game server (udp/9999)\n'

# nsenter itself, not the function on: $! must be the server's pid, not
# that of a subshell around it.
nsenter --net="/run/netns/$SERVER" "$tmp/probe" serve tcp/22 tcp/80 udp/53 udp/9999 &
server_pid=$!
for _ in $(seq 50); do # until the services listen
	on "$CLIENT" "$tmp/probe" tcp "$SERVER_V4" 80 2>/dev/null && break
	sleep 0.1
done

# probe KIND ADDR [PORT]: one ping, TCP connection or UDP datagram from the
# client to the server; prints "passed" or "dropped".
probe() {
	local kind=$1 addr=$2 port=${3:-} rc=0
	case $kind in
	ping) on "$CLIENT" ping -n -c 1 -W 1 "$addr" >/dev/null 2>&1 || rc=$? ;;
	*) on "$CLIENT" "$tmp/probe" "$kind" "$addr" "$port" || rc=$? ;;
	esac
	case $rc in
	0) echo passed ;;
	1) echo dropped ;;
	*) echo "error" ;; # the probe said why on stderr
	esac
}

# The traffic: kind, address, port, what the rules should do with it, why.
FLOWS=(
	"ping $SERVER_V4 - passed no rule matches: a deny list passes the rest"
	"ping $SERVER_V6 - passed no rule matches"
	"tcp $SERVER_V4 80 passed no rule matches"
	"tcp $SERVER_V6 80 passed no rule matches"
	"tcp $SERVER_V4 22 dropped rule no-ssh (the client is not in the office)"
	"tcp $SERVER_V6 22 dropped rule no-ssh"
	"udp $SERVER_V4 53 passed bad actors may still use DNS"
	"udp $SERVER_V4 9999 dropped rule bad-actors-game: the client is in set bad-actors"
	"udp $SERVER_V6 9999 dropped rule bad-actors-game"
)

run_flows() { # $1 = "expect" to check the outcomes against the rules
	local kind addr port want why got label
	printf '  %-26s %-8s %s\n' FLOW RESULT "${1:+EXPECTED, WHY}"
	for f in "${FLOWS[@]}"; do
		read -r kind addr port want why <<<"$f"
		[[ $port == - ]] && port=
		label="$kind ${port:+$port }-> $addr"
		got=$(probe "$kind" "$addr" "$port")
		if [[ -z ${1:-} ]]; then
			printf '  %-26s %-8s\n' "$label" "$got"
			[[ $got == passed ]] || { unexpected=1; printf '    ^ unexpected: nothing filters yet\n'; }
		else
			printf '  %-26s %-8s %s, %s\n' "$label" "$got" "$want" "$why"
			[[ $got == "$want" ]] || { unexpected=1; printf '    ^ unexpected: want %s\n' "$want"; }
		fi
	done
}

say "1. no firewall yet: everything gets through"
run_flows

say "2. apply $RULES to the server's eth0"
sed 's/^/  | /' "$RULES"
ctl apply -f "$RULES"
echo
ctl show

say "3. the same traffic again, now filtered on the way into the server"
run_flows expect

say "4. what the firewall counted (xdpfwctl local stats)"
ctl stats
cat <<'EOF'

  Per rule: the packets each rule decided. Per outcome: how every packet
  ended (pass-default = no rule matched; non-ip = ARP and the like).
EOF

say "5. a ping flood against the rate limit, with the drops sampled (xdpfwctl local drops)"
ctl drops --count 5 --duration 10s &
drops_pid=$!
sleep 0.5 # until the reader holds the samples
on "$CLIENT" ping -n -q -c 200 -i 0.005 -W 1 "$SERVER_V4" | sed -n 's/^/  | /; /packets transmitted/p'
wait "$drops_pid" || unexpected=1
echo
ctl stats | sed -n '/ping-limit/p; /rate-limited/p'
cat <<'EOF'

  200 pings in about two seconds: the burst of 10 and about 10 a second passed, the
  rest were dropped over the limit (OVER LIMIT) and sampled as they were.
EOF

say "6. detach: filtering stops, the pinned maps go"
ctl detach

say "cleaning up (namespaces, pins)"
cleanup
trap - EXIT
if [[ $unexpected -ne 0 ]]; then
	die "some traffic did not do what the rules say (see above)"
fi
echo "done."
