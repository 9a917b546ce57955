#!/usr/bin/env bash
# A device call carries the working tree and its carried files under one 64 MB limit. The tree is
# about 36 MB, 32 of it the committed records' PNG grids (results/), which no device command reads;
# without them, the CIFAR-10 JPEG archive (19.5 MB), the reference-classifier cache (10 MB) and a
# between-task checkpoint's two parts (30 MB) travel in ONE call, instead of three calls back to
# back on a warm machine that can be taken back between them (docs/jdcl.md).
#
#   bash scripts/slim_tree.sh drop      # delete results/**/*.png from the working tree (git keeps them)
#   bash scripts/slim_tree.sh restore   # put them back from git (also safe when nothing was dropped)
#   bash scripts/slim_tree.sh size [CARRIED_PATH ...]
#                                       # MiB that a call would send: the tree's tracked and untracked
#                                       # files that git does not ignore, plus the carried paths
#
# Records stay clean: code_version's dirty flag ignores results/, and the device scripts name the
# commit (JDCL_BENCH_COMMIT). Restore before committing: `git commit -a` would record the deletions.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  drop)
    git diff --quiet --diff-filter=d -- results || { echo "results/ has uncommitted changes: commit them first" >&2; exit 2; }
    git ls-files -z -- 'results/*.png' | xargs -0 rm -f
    echo "dropped $(git ls-files --deleted -- 'results/*.png' | wc -l) PNG files; restore with: bash $0 restore"
    ;;
  restore)
    git ls-files -z --deleted -- 'results/*.png' | xargs -0 -r git checkout --
    echo "restored; $(git ls-files --deleted -- results | wc -l) tracked files under results/ still missing"
    ;;
  size)
    shift
    { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true
      for c in "$@"; do find "$c" -type f -exec stat -c %s {} +; done; } |
      awk '{ n += $1 } END { printf "%.1f MiB would travel (the limit is 64 MiB)\n", n / 1048576 }'
    ;;
  *) echo "usage: $0 drop | restore | size [CARRIED_PATH ...]" >&2; exit 2 ;;
esac
