"""Open-file limit: every connection in flight is a file descriptor.

Many systems start processes with a soft limit of 1,024 (macOS: 256) open files while allowing
far more; at ``-c 2000`` the connections beyond it would fail as connection errors. The soft
limit is raised towards what the run needs (never above the hard limit), and the caller is told
when even the hard limit is too low.
"""

from __future__ import annotations

#: Descriptors a run uses besides its connections (input, journal, parts, loop, stdio).
RESERVED_FDS = 64


def ensure_open_files(connections: int) -> str | None:
    """Raise the soft open-file limit to fit ``connections`` plus :data:`RESERVED_FDS`.

    :return: a warning to show when the limit cannot be raised far enough, else ``None``.
    """
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return None
    needed = connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return None
    return (
        f"warning: {connections:,} concurrent connections need about {needed:,} open files, but "
        f"this process may open only {target:,} (ulimit -n); requests beyond that fail as "
        "connection errors. Raise the limit or lower -c."
    )
