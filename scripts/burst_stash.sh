#!/usr/bin/env bash
# Move out of the checkout what a GPU burst need not carry, and back afterwards. The device tool
# sends the working tree (tracked files and untracked ones git does not ignore) with `carry`, at
# most 64 MiB, and the shipped weights and the benchmark results alone pass that:
#
#   scripts/burst_stash.sh out    # before the device call; prints the size that will travel
#   scripts/burst_stash.sh back   # after it
set -euo pipefail
stash=${BURST_STASH:-/tmp/qdmn-burst-stash}
cd "$(git rev-parse --show-toplevel)"
case "${1:-}" in
out)
    if [ -e "$stash" ]; then echo "error: $stash exists: run '$0 back' first" >&2; exit 2; fi
    mkdir -p "$stash"
    { git ls-files 'models/*.pth'; echo results; } >"$stash/paths.txt"
    while read -r p; do
        mkdir -p "$stash/$(dirname "$p")"
        mv "$p" "$stash/$p"
    done <"$stash/paths.txt"
    # the moved files are still in git's index: du finds them missing and says so (ignored)
    tree=$( { git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null || true; } |
        tail -1 | cut -f1)
    carried=$( (du -sb .burst 2>/dev/null || echo 0) | cut -f1)
    echo "travels: $(( (tree + carried) >> 20 )) MiB of 64 (tree $(( tree >> 20 )), .burst $(( carried >> 20 )))"
    ;;
back)
    if [ ! -f "$stash/paths.txt" ]; then echo "error: nothing stashed in $stash" >&2; exit 2; fi
    while read -r p; do mv "$stash/$p" "$p"; done <"$stash/paths.txt"
    rm -rf "$stash"
    git status --short
    ;;
*) echo "usage: $0 out|back" >&2; exit 2 ;;
esac
