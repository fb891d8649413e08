#!/bin/sh
# Print every working CPython 3.10-3.13 on this machine, one interpreter path per line, one per
# minor version, oldest first. Used by `make test-all` and `.ci/run`.
#
# Candidates: python3.10 .. python3.13 and python3 on PATH, then $(pyenv root)/versions/3.1*/bin/python3.
# A pyenv shim exits 127 for a version that PYENV_VERSION/.python-version does not select, and a
# distribution Python may lack venv, so each candidate is run and kept only if it really works; the
# path printed is its sys.executable (a real binary, not a shim). Exits 1 when none is found.
set -u

probe='import sys, venv, ensurepip
assert sys.implementation.name == "cpython"
assert (3, 10) <= sys.version_info[:2] <= (3, 13)
print("%d.%d %s" % (sys.version_info[0], sys.version_info[1], sys.executable))'

candidates() {
    for name in python3.10 python3.11 python3.12 python3.13 python3; do
        command -v "$name" 2>/dev/null
    done
    root=""
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root 2>/dev/null) || root=""
    fi
    root=${root:-${PYENV_ROOT:-${HOME:-/nonexistent}/.pyenv}}
    for bin in "$root"/versions/3.1*/bin/python3; do
        if [ -x "$bin" ]; then
            printf '%s\n' "$bin"
        fi
    done
}

nl='
'
seen=" "
found=""
# Split the candidate list on newlines only, so a path with spaces stays whole.
IFS=$nl
for bin in $(candidates); do
    out=$("$bin" -c "$probe" </dev/null 2>/dev/null) || continue
    ver=${out%% *}
    path=${out#* }
    case "$seen" in
        *" $ver "*) continue ;;
    esac
    seen="$seen$ver "
    found="$found$ver $path$nl"
done

if [ -z "$found" ]; then
    echo "find-pythons.sh: no working CPython 3.10-3.13 found (looked on PATH and in pyenv)" >&2
    exit 1
fi
printf '%s' "$found" | sort -t. -k1,1n -k2,2n | cut -d' ' -f2-
