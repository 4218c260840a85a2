#!/usr/bin/env bash
# The kernel matrix (make kernels): the bpf package's tests, run inside each
# Debian kernel the project supports, booted under QEMU. The host's `go test`
# proves the data plane on the host's kernel only; the verifier and the BPF
# helpers differ between kernels (Debian 12's 6.1 refused a program 6.12 took),
# so each kernel we claim gets the same tests in a VM of its own.
#
# For each kernel: resolve the current package through its Debian metapackage,
# download and extract it once into a cache (never installed as the running
# kernel), build an initramfs of busybox, the static test binary and the
# kernel modules the tests need, boot it with TCG (no KVM on CI machines),
# and judge the guest's output. See tools/kernels/README.md.
#
# Settings (environment):
#   KERNELS           kernels to run, by name (default: all, "6.1 6.12")
#   KERNELS_CACHE     download cache (default /var/cache/xdpfw-kernels)
#   KERNELS_OUT       initramfs and guest logs (default bin/kernels)
#   KERNELS_JOBS      guests booted at once (default 2)
#   KERNELS_TIMEOUT   hard limit per guest, seconds, boot included (default 1800)
#   KERNELS_TEST_RUN  -test.run regexp, for isolating a problem (default: all tests)
#   KERNELS_VERBOSE   1: print each guest's whole output, not only on failure
#   KERNELS_APPEND    more kernel command-line parameters (experiments)
set -euo pipefail
cd "$(dirname "$0")/../.."

# The kernels: name, then the Debian metapackage that names the current
# package of that series. Adding a kernel is adding a line.
declare -A METAPACKAGE=(
	[6.1]=linux-image-cloud-amd64          # bookworm's own kernel
	[6.12]=linux-image-6.12-cloud-amd64    # bookworm-security's newer series
)
ALL_KERNELS="6.1 6.12"

# Options the tests cannot work without: built in (=y), or the guest cannot
# boot from a gzip initramfs, talk on the serial console, or load programs
# (CheckKernel probes XDP links in a network namespace of its own).
BUILTIN_CONFIG="BLK_DEV_INITRD RD_GZIP DEVTMPFS SERIAL_8250_CONSOLE BPF_SYSCALL BPF_JIT NET_NS"
# Options the tests need that may be modules: CONFIG:module. veth: the attach
# and migration tests create veth pairs over netlink. Everything else they use
# (bpffs, XDP, BPF_PROG_RUN, map types, ring buffers) comes with BPF_SYSCALL
# and the network core, which Debian builds in.
MODULE_CONFIG="VETH:veth"

# TestVerifierBudget logs the verifier's processed-instruction count; the
# matrix requires that line from every kernel when the whole suite runs.
REQUIRE_VERIFIER_COUNT=1

KERNELS=${KERNELS:-$ALL_KERNELS}
CACHE=${KERNELS_CACHE:-/var/cache/xdpfw-kernels}
OUT=${KERNELS_OUT:-bin/kernels}
JOBS=${KERNELS_JOBS:-2}
TIMEOUT=${KERNELS_TIMEOUT:-1800}
TEST_RUN=${KERNELS_TEST_RUN:-}
VERBOSE=${KERNELS_VERBOSE:-0}
APPEND=${KERNELS_APPEND:-}
GO=${GO:-go}
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "KERNELS_TIMEOUT is seconds, not $TIMEOUT"
# The Go test timeout is shorter than the hard one, so a hung test ends with
# Go's stack dump of every goroutine rather than a silent kill of the VM.
TEST_TIMEOUT=$((TIMEOUT > 240 ? TIMEOUT - 120 : TIMEOUT / 2))s

die() { echo "kernels: $*" >&2; exit 1; }
say() { echo "kernels: $*"; }

need_tool() { # tool, Debian package that has it
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2 (.ci/run installs it)"
}
need_tool qemu-system-x86_64 qemu-system-x86
need_tool cpio cpio
need_tool gzip gzip
need_tool flock util-linux
need_tool timeout coreutils
need_tool apt-get apt
need_tool dpkg-deb dpkg
need_tool "$GO" golang
# The initramfs has no libc: its busybox must be the static build (the
# busybox package installs a dynamic one at the same path).
dpkg -s busybox-static >/dev/null 2>&1 || die "busybox-static is not installed: apt-get install busybox-static"
BUSYBOX=/bin/busybox
[ "$(id -u)" = 0 ] || die "must run as root (apt-get download into the cache, as CI does)"

for k in $KERNELS; do
	[ -n "${METAPACKAGE[$k]:-}" ] || die "unknown kernel $k: known are $ALL_KERNELS (tools/kernels/README.md says how to add one)"
done

mkdir -p "$CACHE" "$OUT" || die "cannot create $CACHE or $OUT"
CACHE=$(cd "$CACHE" && pwd)
OUT=$(cd "$OUT" && pwd)

# ---- kernels: resolve, download, extract (cached) ----

# resolve METAPACKAGE: prints "package version" of the kernel image it
# currently depends on (the candidate version, as apt would install it).
resolve() {
	local pkg ver
	pkg=$(apt-cache depends "$1" 2>/dev/null | awk '/^ *Depends: linux-image-/ {print $2; exit}')
	[ -n "$pkg" ] || return 1
	ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
	[ -n "$ver" ] || return 1
	echo "$pkg $ver"
}

# fetch NAME: makes $CACHE/<package>_<version>/ hold the extracted kernel of
# that name (with a modules.dep, which the package leaves to its postinst)
# and prints its path. Downloads only what the cache lacks.
fetch() {
	local name=$1 meta=${METAPACKAGE[$1]} pkgver pkg ver dir tmp deb updated=0
	while :; do
		if pkgver=$(resolve "$meta"); then
			read -r pkg ver <<<"$pkgver"
			dir=$CACHE/${pkg}_${ver}
			[ -e "$dir/.complete" ] && break
			tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
			say "$name: downloading $pkg $ver" >&2
			# The cache is root's; apt's _apt sandbox user could not write it.
			if (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2); then
				deb=$(echo "$tmp"/*.deb)
				mkdir "$tmp/root"
				dpkg-deb -x "$deb" "$tmp/root" || die "$name: cannot extract $deb"
				local kver
				kver=$(ls "$tmp/root/lib/modules")
				# Debian ships no modules.dep (depmod runs at install time).
				"$BUSYBOX" depmod -b "$tmp/root" "$kver" || die "$name: depmod failed for $pkg $ver"
				echo "$meta" >"$tmp/root/.metapackage"
				touch "$tmp/root/.complete"
				rm -rf "$dir"
				mv "$tmp/root" "$dir"
				rm -rf "$tmp"
				# An older package of the same series is not needed again.
				local old
				for old in "$CACHE"/linux-image-*/; do
					old=${old%/}
					[ "$old" != "$dir" ] && [ "$(cat "$old/.metapackage" 2>/dev/null)" = "$meta" ] && rm -rf "$old"
				done
				break
			fi
			rm -rf "$tmp"
		fi
		# Not known, or known but gone from the mirror (security updates
		# replace packages): refresh the lists once, then give up.
		[ "$updated" = 0 ] || die "$name: cannot resolve or download the package of $meta (apt-get update done; is the network or the mirror down?)"
		say "$name: $meta not resolvable or not downloadable; running apt-get update" >&2
		apt-get update -q >&2 || die "$name: apt-get update failed"
		updated=1
	done
	echo "$dir"
}

# ---- the initramfs ----

# modules_of DEPFILE PATTERN: the file of the module whose modules.dep line
# matches PATTERN, after its dependencies' files (each after its own), so
# loading them in this order never misses a symbol. Paths are relative to
# the modules directory and may repeat; the caller skips repeats.
modules_of() {
	local depfile=$1 line d
	line=$(grep -E -m1 "$2" "$depfile") || return 1
	for d in ${line#*:}; do
		modules_of "$depfile" "^${d//./\\.}:" || return 1
	done
	echo "${line%%:*}"
}

# build_initramfs NAME KROOT: $OUT/NAME/initramfs.gz. Prints the kernel release.
build_initramfs() {
	local name=$1 root=$2 kver config stage opt mod m f files base modules=""
	kver=$(ls "$root/lib/modules")
	config=$root/boot/config-$kver
	[ -f "$config" ] || die "$name: no $config in the package"
	for opt in $BUILTIN_CONFIG; do
		grep -qx "CONFIG_$opt=y" "$config" || die "$name: $kver lacks CONFIG_$opt=y, which the tests need"
	done
	stage=$OUT/$name/root
	rm -rf "$stage"
	mkdir -p "$stage/bin" "$stage/etc" "$stage/modules"
	for m in $MODULE_CONFIG; do
		opt=${m%%:*} mod=${m#*:}
		if grep -qx "CONFIG_$opt=y" "$config"; then continue; fi
		grep -qx "CONFIG_$opt=m" "$config" || die "$name: $kver has CONFIG_$opt neither built in nor as a module"
		files=$(modules_of "$root/lib/modules/$kver/modules.dep" "(^|/)$mod\\.ko(\\.xz)?:") ||
			die "$name: module $mod (or one it depends on) is not in $kver's modules.dep"
		for f in $files; do
			base=$(basename "$f")
			base=${base%.xz} base=${base%.ko}
			case " $modules " in *" $base "*) continue ;; esac
			# busybox insmod reads only uncompressed modules.
			case $f in
			*.xz) "$BUSYBOX" xzcat "$root/lib/modules/$kver/$f" >"$stage/modules/$base.ko" ;;
			*.ko) cp "$root/lib/modules/$kver/$f" "$stage/modules/$base.ko" ;;
			*) die "$name: $f: unsupported module compression" ;;
			esac
			modules="$modules $base"
		done
	done
	cp "$BUSYBOX" "$stage/bin/busybox"
	cp tools/kernels/init "$stage/init"
	cp "$OUT/bpf.test" "$stage/bpf.test"
	{
		printf 'TEST_TIMEOUT=%q\n' "$TEST_TIMEOUT"
		printf 'TEST_RUN=%q\n' "$TEST_RUN"
		printf 'MODULES=%q\n' "${modules# }"
	} >"$stage/etc/xdpfw-kernels.conf"
	(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/$name/initramfs.gz"
	echo "$kver"
}

# ---- boot and judge ----

# run_guest NAME KROOT KVER PKG VER: boots the kernel and judges its output
# into $OUT/NAME/summary and $OUT/NAME/status.
run_guest() {
	local name=$1 root=$2 kver=$3 pkg=$4 ver=$5 dir=$OUT/$1 start rc=0
	start=$(date +%s)
	# TCG: no KVM on CI machines. -cpu max gives the guest every feature
	# QEMU can emulate (the kernel picks the same BPF JIT paths as on real
	# CPUs). panic=-1 with -no-reboot turns a guest panic into QEMU exiting,
	# not a hang until the timeout. No network card: the tests make veths.
	timeout -k 30 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 2G -smp 2 \
		-nographic -nic none -no-reboot -pidfile "$dir/qemu.pid" \
		-kernel "$root/boot/vmlinuz-$kver" -initrd "$dir/initramfs.gz" \
		-append "console=ttyS0 panic=-1${APPEND:+ $APPEND}" </dev/null 2>&1 | tr -d '\r' >"$dir/guest.log" || rc=$?
	rm -f "$dir/qemu.pid"
	judge "$dir" "$name" "$kver" "$pkg" "$ver" "$rc" "$(($(date +%s) - start))"
}

# judge DIR NAME KVER PKG VER RC SECONDS: reads DIR/guest.log (QEMU exited
# with RC after SECONDS) and writes DIR/summary, a line and the problems
# under it, and DIR/status, PASS or FAIL.
judge() {
	local dir=$1 name=$2 kver=$3 pkg=$4 ver=$5 rc=$6 secs=$7
	local log=$dir/guest.log problems=() insns="count: not printed" tests runs booted end
	[ "$rc" = 124 ] && problems+=("timed out after ${TIMEOUT}s")
	[ "$rc" != 0 ] && [ "$rc" != 124 ] && problems+=("qemu exited with status $rc")
	booted=$(sed -n 's/^XDPFW-KERNELS-UNAME //p' "$log" | head -1)
	[ -z "$booted" ] || [ "$booted" = "$kver" ] || problems+=("booted $booted, not $kver")
	end=$(sed -n 's/^XDPFW-KERNELS-END exit=\([0-9]*\)$/\1/p' "$log" | tail -1)
	if [ -z "$end" ]; then
		problems+=("no end marker: the guest died or hung before the tests ended")
	elif [ "$end" != 0 ]; then
		problems+=("the test binary exited with status $end")
	fi
	# Go's -test.timeout panics with the tests that were running, and no
	# --- FAIL line.
	grep -q '^panic: test timed out' "$log" &&
		problems+=("go test timed out ($TEST_TIMEOUT) in: $(sed -n '/^panic: test timed out/,/^$/p' "$log" | sed -n 's/^\t\t\(Test[^ ]*\).*/\1/p' | paste -sd ' ')")
	grep -Eq '^ *--- FAIL' "$log" && problems+=("failed: $(grep -E '^ *--- FAIL' "$log" | awk '{print $3}' | paste -sd ' ')")
	grep -Eq '^ *--- SKIP' "$log" && problems+=("skipped (not allowed): $(grep -E '^ *--- SKIP' "$log" | awk '{print $3}' | paste -sd ' ')")
	runs=$(grep -c '^=== RUN' "$log" || true)
	tests=$(grep -c '^--- PASS' "$log" || true)
	[ "$runs" -gt 0 ] || problems+=("no test ran")

	# "verifier: processed N insns (budget B) on kernel R [config]", from
	# TestVerifierBudget: the program's most expensive configuration. The
	# test fails over the budget; the count is checked here too, so a test
	# that stopped failing would not go unnoticed.
	local vline n budget
	vline=$(grep -Eo 'verifier: processed [0-9]+ insns \(budget [0-9]+\) on kernel [^ ]+' "$log" | tail -1 || true)
	if [ -n "$vline" ]; then
		insns=${vline% on kernel *}
		[[ "$vline" =~ processed\ ([0-9]+)\ insns\ \(budget\ ([0-9]+)\) ]]
		n=${BASH_REMATCH[1]} budget=${BASH_REMATCH[2]}
		[ "$n" -le "$budget" ] || problems+=("the verifier processed $n instructions, over the budget of $budget")
		[ "${vline##* on kernel }" = "$kver" ] || problems+=("verifier count from kernel ${vline##* on kernel }, not $kver")
	elif [ "$REQUIRE_VERIFIER_COUNT" = 1 ] && [ -z "$TEST_RUN" ]; then
		problems+=("TestVerifierBudget printed no processed-instruction count")
	fi

	# Kernel warnings during the tests do not fail the run by themselves (a
	# test that suffers from one fails), but they are worth a look.
	local splats
	splats=$(sed -n '/^XDPFW-KERNELS-DMESG-BEGIN$/,/^XDPFW-KERNELS-DMESG-END$/p' "$log" |
		grep -cE 'WARNING:|BUG:|Oops|Call Trace' || true)

	local result=PASS p
	[ ${#problems[@]} = 0 ] || result=FAIL
	printf '%-5s %-42s %-22s %s %3d tests %5ds  %s\n' "$name" "$pkg" "$ver" "$result" "$tests" "$secs" "$insns" >"$dir/summary"
	for p in "${problems[@]}"; do echo "        $p" >>"$dir/summary"; done
	[ "$splats" = 0 ] || echo "        note: the kernel logged $splats warning lines during the tests (see $log)" >>"$dir/summary"
	echo "$result" >"$dir/status"
}

# Stop the guests if the run is interrupted: each QEMU wrote its pid file.
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local f
	for f in "$OUT"/*/qemu.pid; do
		if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
	done
}

# The driver is one function, read whole before it runs: editing this file
# (or git pull) during a run cannot change what the running shell reads.
main() {
	trap cleanup EXIT
	trap 'exit 130' INT TERM

	# One writer of the cache at a time (two CI jobs on one machine).
	exec 9>"$CACHE/.lock"
	flock -w 900 9 || die "another run has held $CACHE/.lock for 15 minutes"
	declare -A KROOT KVER PKG VER
	for k in $KERNELS; do
		KROOT[$k]=$(fetch "$k")
		base=$(basename "${KROOT[$k]}")
		PKG[$k]=${base%%_*} VER[$k]=${base#*_}
	done
	flock -u 9

	say "building the static test binary (CGO_ENABLED=0 go test -c ./bpf)"
	CGO_ENABLED=0 "$GO" test -c -o "$OUT/bpf.test" ./bpf || die "cannot build the bpf test binary"

	for k in $KERNELS; do
		mkdir -p "$OUT/$k"
		rm -f "$OUT/$k/summary" "$OUT/$k/status" "$OUT/$k/guest.log"
		KVER[$k]=$(build_initramfs "$k" "${KROOT[$k]}")
		say "$k: ${PKG[$k]} ${VER[$k]} (kernel ${KVER[$k]}), initramfs $(du -h "$OUT/$k/initramfs.gz" | cut -f1)"
	done

	# Boot the guests, at most JOBS at a time. TCG spends most of a core per
	# busy vCPU and the tests are mostly one thread, so two guests on two cores
	# take about as long as one (README.md has the figures).
	started=$(date +%s)
	pids=()
	for k in $KERNELS; do
		while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
		say "$k: booting under QEMU (TCG), limit ${TIMEOUT}s; log in $OUT/$k/guest.log"
		run_guest "$k" "${KROOT[$k]}" "${KVER[$k]}" "${PKG[$k]}" "${VER[$k]}" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || true; done

	failed=0
	for k in $KERNELS; do
		if [ "$(cat "$OUT/$k/status" 2>/dev/null)" != PASS ]; then
			failed=1
			echo "==== $k: guest output ($OUT/$k/guest.log) ===="
			cat "$OUT/$k/guest.log" 2>/dev/null || echo "(none)"
		elif [ "$VERBOSE" = 1 ]; then
			echo "==== $k: guest output ===="
			cat "$OUT/$k/guest.log"
		fi
	done

	echo
	echo "kernel matrix ($(($(date +%s) - started))s${TEST_RUN:+, -test.run $TEST_RUN}):"
	for k in $KERNELS; do
		cat "$OUT/$k/summary" 2>/dev/null || echo "$k     FAIL (no result)"
	done
	echo "host  $(uname -r): the same tests ran on the host in make test's go test ./..."
	[ "$failed" = 0 ] || die "the kernel matrix failed"
}

main "$@"; exit
