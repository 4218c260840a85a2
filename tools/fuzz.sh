#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (make fuzz).
#
# Go 1.26's fuzzing coordinator can end a run that found nothing with
# "context deadline exceeded" at the -fuzztime boundary when the machine
# is busy (golang/go#75804, fixed in Go 1.27): a race in its shutdown,
# not a failing input. A run that fails that way, with no failing input
# written, is run once more; any other failure fails at once.
set -uo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}

run() { # pkg target
	local out rc
	out=$("$GO" test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" "$1" 2>&1)
	rc=$?
	printf '%s\n' "$out"
	if [[ $rc -ne 0 ]] && grep -q 'context deadline exceeded' <<<"$out" &&
		! grep -q -e 'Failing input written' -e 'panic:' -e '_test.go:[0-9]*:' <<<"$out"; then
		return 75 # the coordinator's deadline race
	fi
	return "$rc"
}

for pkg in $("$GO" list ./...); do
	dir=$("$GO" list -f '{{.Dir}}' "$pkg")
	for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/func //'); do
		echo "fuzz $pkg $f"
		run "$pkg" "$f"
		rc=$?
		if [[ $rc -eq 75 ]]; then
			echo "fuzz $pkg $f: Go's fuzzing deadline race (golang/go#75804), no failing input: running it again"
			run "$pkg" "$f"
			rc=$?
		fi
		if [[ $rc -ne 0 ]]; then
			echo "fuzz $pkg $f: FAILED" >&2
			exit 1
		fi
	done
done
