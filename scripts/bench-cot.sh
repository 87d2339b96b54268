#!/usr/bin/env bash
# Benchmark: `keytap cot sign` (parallel streaming hashing + one agent signature) against
# single-process `sha256sum` over the same tree: 1 GiB in 1,000 files by default, page cache
# warm, several rounds, medians. A measurement, never a test.
#
#   scripts/bench-cot.sh [ROUNDS]        (env: FILES, TOTAL_MIB, CARGO_TARGET_DIR)
set -euo pipefail

ROUNDS=${1:-5}
FILES=${FILES:-1000}
TOTAL_MIB=${TOTAL_MIB:-1024}
FILE_BYTES=$(( (TOTAL_MIB << 20) / FILES ))
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release --quiet
KEYTAP="$TARGET/release/keytap"

. scripts/mock-agent.sh
# A mock-token agent on a private socket, PIN from a 0600 file (9c: PIN always, touch auto-approved).
start_mock_agent

echo "creating $FILES files of $FILE_BYTES bytes in $WORK/artifacts ..." >&2
mkdir -p "$WORK/artifacts/public/build"
for i in $(seq -w 1 "$FILES"); do
    head -c "$FILE_BYTES" /dev/urandom >"$WORK/artifacts/public/build/part-$i.bin"
done
printf '%s' '{"taskGroupId":"Zb7Qn2yBRPGZ0ZIcn-HnwQ","workerType":"bench","dependencies":[],"scopes":[],"payload":{}}' >"$WORK/task.json"
# Warm the page cache so both sides read from memory: this compares hashing, not the disk.
cat "$WORK"/artifacts/public/build/* >/dev/null

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

sign() {
    "$KEYTAP" cot sign --artifacts "$WORK/artifacts" --task "$WORK/task.json" --task-id VVv9ZC5uRNaCwi8r5p-uQA \
        --run-id 0 --worker-group bench --worker-id bench-1 --out "$WORK/out" >/dev/null 2>&1
}

sha_times=()
cot_times=()
one_times=()
for r in $(seq "$ROUNDS"); do
    t0=$(now)
    (cd "$WORK/artifacts" && find . -type f -print0 | sort -z | xargs -0 sha256sum >/dev/null)
    t1=$(now)
    sign
    t2=$(now)
    # The same on one thread: separates the parallel speed-up from the hash implementation's.
    RAYON_NUM_THREADS=1 sign
    t3=$(now)
    s=$(calc "$t1 - $t0")
    c=$(calc "$t2 - $t1")
    o=$(calc "$t3 - $t2")
    sha_times+=("$s")
    cot_times+=("$c")
    one_times+=("$o")
    printf 'round %d: sha256sum %.3f s, keytap cot sign %.3f s, keytap cot sign on 1 thread %.3f s\n' "$r" "$s" "$c" "$o"
done

# Both sides must have hashed the same bytes the same way.
listed=$(grep -c '"sha256"' "$WORK/out/chain-of-trust.json")
[ "$listed" -eq "$FILES" ] || { echo "expected $FILES artifacts listed, found $listed" >&2; exit 1; }
one=$(cd "$WORK/artifacts" && sha256sum public/build/part-$(printf "%0${#FILES}d" 1).bin | cut -d' ' -f1)
grep -q "$one" "$WORK/out/chain-of-trust.json" || { echo "digest mismatch against sha256sum" >&2; exit 1; }

sha_med=$(printf '%s\n' "${sha_times[@]}" | median)
cot_med=$(printf '%s\n' "${cot_times[@]}" | median)
one_med=$(printf '%s\n' "${one_times[@]}" | median)
ratio=$(calc "$sha_med / $cot_med")
mib=$(calc "$FILES * $FILE_BYTES / 1048576")
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
printf 'tree: %d files, %.0f MiB; rounds: %d\n' "$FILES" "$mib" "$ROUNDS"
printf 'median sha256sum:        %.3f s (%.0f MiB/s)\n' "$sha_med" "$(calc "$mib / $sha_med")"
printf 'median keytap cot sign:  %.3f s (%.0f MiB/s)\n' "$cot_med" "$(calc "$mib / $cot_med")"
printf 'median keytap, 1 thread: %.3f s (%.0f MiB/s)\n' "$one_med" "$(calc "$mib / $one_med")"
printf 'speed-up over sha256sum: %.2fx (1 thread: %.2fx; parallel over 1 thread: %.2fx)\n' \
    "$ratio" "$(calc "$sha_med / $one_med")" "$(calc "$one_med / $cot_med")"
