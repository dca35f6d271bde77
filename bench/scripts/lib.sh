# Shared helpers for the bench/scripts/*.sh comparisons; source it, do not run it.

# ensure_tools COMMAND:PACKAGE ... — installs (apt-get) the Debian package of every COMMAND that is not on PATH,
# so each script starts its own peers (nginx, wrk, haproxy) on a fresh machine. A COMMAND that is an absolute
# path counts as present when that file is executable (nginx lives in /usr/sbin, not always on PATH).
ensure_tools() {
    local need=() pair tool package
    for pair in "$@"; do
        tool=${pair%%:*}
        package=${pair#*:}
        if [[ $tool == /* ]]; then
            [[ -x $tool ]] || command -v "${tool##*/}" >/dev/null || need+=("$package")
        else
            command -v "$tool" >/dev/null || need+=("$package")
        fi
    done
    ((${#need[@]})) || return 0
    echo "installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}
