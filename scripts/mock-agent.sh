# Sourced by the benchmark scripts: a mock-token agent on a private socket in a fresh 0700
# $WORK directory, PIN from a 0600 file, stopped (and $WORK removed) when the script exits.
#
#   start_mock_agent [AGENT ARGS...]    # needs $KEYTAP; exports SSH_AUTH_SOCK
WORK=$(mktemp -d)
chmod 700 "$WORK"
AGENT_PID=
cleanup() {
    if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

start_mock_agent() {
    "$KEYTAP" mock init --state-dir "$WORK/mock" >/dev/null
    printf '123456\n' >"$WORK/pin"
    chmod 600 "$WORK/pin"
    KEYTAP_LOG=warn "$KEYTAP" agent --token mock --foreground --state-dir "$WORK/mock" \
        --socket "$WORK/agent.sock" --pin-file "$WORK/pin" "$@" >/dev/null 2>&1 &
    AGENT_PID=$!
    export SSH_AUTH_SOCK="$WORK/agent.sock"
    for _ in $(seq 200); do
        if [ -S "$SSH_AUTH_SOCK" ] && [ "$(ssh-add -L 2>/dev/null | wc -l)" -ge 1 ]; then return 0; fi
        sleep 0.05
    done
    echo "the mock agent did not start" >&2
    return 1
}
