"""Exactly which code a run ran: the flow script's bytes, and where that script stands in git.

Metaflow's git facts (`get_repository_info`) say which commit the checkout was on and whether
tracked files changed, but not whether the script itself is in that commit: an untracked
flow.py reads as "clean". This module adds what decides it, with plain `git` calls that each
have a short timeout; no git, no checkout or a slow one only leave facts out, never fail a deploy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

GIT_TIMEOUT = 5.0  # seconds per git call
MAX_UNTRACKED = 20  # untracked Python files named in a record; a count says how many more
# The keys Metaflow's get_repository_info returns (and records in its own git-info metadata).
METAFLOW_GIT_KEYS = ("repo_url", "branch_name", "commit_sha", "has_uncommitted_changes")


def file_identity(path: str | Path) -> dict[str, Any]:
    """{path, sha256, size} of a file's bytes on disk, the path absolute."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": os.path.abspath(path), "sha256": digest, "size": os.path.getsize(path)}


def git(folder: str | Path, *args: str) -> str | None:
    """`git args` run in `folder`: its stdout without the line end, or None if git failed or hung."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):  # no git, no such folder, or a timeout
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None


def work_tree(folder: str | Path) -> Path | None:
    """The top folder of the git work tree holding `folder`, or None when there is none."""
    top = git(folder, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def script_in_git(script: str | Path) -> dict[str, Any]:
    """Where the script stands at HEAD; empty when it is in no git work tree.

    `script_tracked`: the script is in commit HEAD. `script_matches_commit`: the file on disk is
    the committed blob (`git hash-object` of the file equals HEAD's blob: exact, no diff; None
    when untracked). `untracked_modules`: Python files under the script's folder in no commit
    and not ignored (the flow may import them), relative to that folder.
    """
    script = Path(os.path.realpath(script))
    top = work_tree(script.parent)
    if top is None:
        return {}
    try:
        # NOTE: git prints the top folder with symlinks resolved, so the script's path must be too.
        rel = script.relative_to(os.path.realpath(top)).as_posix()
    except ValueError:  # a script outside the work tree its folder is in: nothing to compare
        return {}
    committed = git(top, "rev-parse", "--verify", "--quiet", f"HEAD:{rel}")
    on_disk = git(top, "hash-object", "--", rel) if committed else None
    return {
        "script_path": rel,
        "script_tracked": committed is not None,
        "script_matches_commit": None if committed is None or on_disk is None else on_disk == committed,
        **_untracked_modules(script),
    }


def _untracked_modules(script: Path) -> dict[str, Any]:
    listing = git(script.parent, "ls-files", "--others", "--exclude-standard", "--", "*.py")
    if listing is None:
        return {}
    # NOTE: ls-files names paths relative to the folder it runs in, which is the script's.
    names = sorted(n for n in listing.splitlines() if n and n != script.name)
    found: dict[str, Any] = {"untracked_modules": names[:MAX_UNTRACKED]}
    if len(names) > MAX_UNTRACKED:
        found["untracked_modules_more"] = len(names) - MAX_UNTRACKED
    return found


def run_git_info(script: str | Path) -> dict[str, Any] | None:
    """The record's `git`: Metaflow's facts plus `script_in_git`'s; None outside a checkout.

    A task that runs from a code package (remote compute) has no checkout: its git facts are the
    launching machine's, as Metaflow packed them, and the script's state there is unknown (None).
    """
    from metaflow.metaflow_git import get_repository_info
    from metaflow.packaging_sys import MetaflowCodeContent

    packed = MetaflowCodeContent.get_info()
    if packed is not None:
        facts = {k: packed[k] for k in METAFLOW_GIT_KEYS if k in packed}
        return {**facts, "script_tracked": None, "script_matches_commit": None} if facts else None
    # NOTE: Metaflow caches this per process and has called it at task start (its metadata).
    facts = get_repository_info(os.path.dirname(os.path.abspath(script)))
    if not facts:
        return None
    return {**facts, **script_in_git(script)}
