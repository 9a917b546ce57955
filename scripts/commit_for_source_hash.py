"""Which commit ran a record: the commits whose ``jdcl_bench`` sources hash to a record's
``code_version.source_hash``.

A record's ``commit`` comes from git where the run happened. On a GPU machine that received a copied
working tree, git may be older than the tree (the record then says ``dirty: true`` against a stale
commit); the source hash is computed from the files themselves, so it still names the code. This
walks the history and hashes each commit's ``jdcl_bench/**/*.py`` the way ``records.source_hash``
hashes a working tree, without checking anything out.

    python scripts/commit_for_source_hash.py 7207d00c9a7ae924 [--max-commits 300]
"""
from __future__ import annotations

import argparse
import subprocess
from functools import partial
from pathlib import Path, PurePosixPath

from jdcl_bench.records import hash_sources

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, text: bool = True):
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=text).stdout


def tree_source_hash(commit: str, package: str = "jdcl_bench") -> str:
    """records.source_hash() of the package as it is in ``commit``: its ``*.py`` files in pathlib's
    sort order, hashed by records.hash_sources."""
    files = [f for f in git("ls-tree", "-r", "--name-only", commit, "--", package).splitlines() if f.endswith(".py")]
    rel = sorted((PurePosixPath(f).relative_to(package) for f in files), key=lambda p: p.parts)
    return hash_sources((r, partial(git, "show", f"{commit}:{package}/{r}", text=False)) for r in rel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source_hash")
    ap.add_argument("--max-commits", type=int, default=300, help="how far back to look from HEAD")
    args = ap.parse_args()
    found = []
    for commit in git("rev-list", f"--max-count={args.max_commits}", "HEAD").split():
        if tree_source_hash(commit) == args.source_hash:
            found.append(commit)
            print(commit, git("log", "-1", "--format=%cI %s", commit).strip()[:120])
    if not found:
        raise SystemExit(f"no commit among the last {args.max_commits} has source hash {args.source_hash}")


if __name__ == "__main__":
    main()
