#!/usr/bin/env python3
"""
backup-runner: a ductile protocol-2 plugin (stdlib only).

poll: find the newest archive in config.archive_dir and emit ONE event

    backup.ready  {archive_path, archive_id, size_bytes, sha256}
    dedupe_key    backup.ready:<archive_id>

then remember it in the plugin state (state_updates.last_archive_id), so the
next poll stays quiet until a newer archive appears.

An archive is a regular file whose name ends in one of ARCHIVE_SUFFIXES; its
archive_id is the name without that suffix (nightly-2026-05-03.tar.zst ->
nightly-2026-05-03). "Newest" means the latest modification time (ties: the
greater name). Names starting with "." are skipped, so a backup tool should
write to a hidden or differently-named temporary file and rename it into
place when complete.

archive_dir must be an absolute path: the plugin runs in the daemon's working
directory, not next to the config file.

Protocol: one JSON request on stdin, exactly one JSON response on stdout,
diagnostics on stderr only.
"""
import hashlib
import json
import os
import sys

ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tgz", ".tar", ".zip")


def reply(**response):
    """Write the one response object and stop."""
    json.dump(response, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(0)


def fail(message, retry=True):
    print(f"backup-runner: {message}", file=sys.stderr)
    reply(status="error", error=message, retry=retry)


def archive_id_of(name):
    """The archive id for a file name, or None when it is not an archive."""
    if name.startswith("."):
        return None
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def archive_dir_from(config):
    archive_dir = config.get("archive_dir")
    if not isinstance(archive_dir, str) or not archive_dir.strip():
        fail("config archive_dir must be a non-empty path", retry=False)
    archive_dir = os.path.expanduser(archive_dir.strip())
    if not os.path.isabs(archive_dir):
        fail(f"config archive_dir must be an absolute path, got {archive_dir!r} "
             "(plugins run in the daemon's working directory)", retry=False)
    return archive_dir


def list_archives(archive_dir):
    """[(mtime, name, archive_id)] of the archives in archive_dir."""
    found = []
    with os.scandir(archive_dir) as entries:
        for entry in entries:
            archive_id = archive_id_of(entry.name)
            if archive_id and entry.is_file():
                found.append((entry.stat().st_mtime, entry.name, archive_id))
    return found


def poll(request):
    archive_dir = archive_dir_from(request.get("config") or {})
    if not os.path.exists(archive_dir):
        reply(status="ok", result=f"no archives found: {archive_dir} does not exist")
    try:
        archives = list_archives(archive_dir)
    except OSError as e:
        # The next scheduled poll tries again; retrying at once would not help.
        fail(f"cannot read archive_dir {archive_dir}: {e.strerror or e}", retry=False)
    if not archives:
        reply(status="ok", result=f"no archives found in {archive_dir}")

    _, name, archive_id = max(archives)
    if (request.get("state") or {}).get("last_archive_id") == archive_id:
        reply(status="ok", result=f"no new archive ({archive_id} was already announced)")

    path = os.path.join(archive_dir, name)
    try:
        size = os.stat(path).st_size
        digest = sha256_of(path)
    except OSError as e:
        fail(f"cannot read archive {path}: {e.strerror or e}")
    print(f"backup-runner: announcing {path}", file=sys.stderr)
    reply(
        status="ok",
        result=f"announced {archive_id} ({size} bytes)",
        events=[{
            "type": "backup.ready",
            "payload": {"archive_path": path, "archive_id": archive_id,
                        "size_bytes": size, "sha256": digest},
            "dedupe_key": f"backup.ready:{archive_id}",
        }],
        state_updates={"last_archive_id": archive_id},
    )


def health(request):
    archive_dir = archive_dir_from(request.get("config") or {})
    if not os.path.exists(archive_dir):
        reply(status="ok", result=f"healthy; {archive_dir} does not exist yet")
    try:
        count = len(list_archives(archive_dir))
    except OSError as e:
        fail(f"cannot read archive_dir {archive_dir}: {e.strerror or e}", retry=False)
    reply(status="ok", result=f"healthy; {count} archive(s) in {archive_dir}")


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        fail(f"request on stdin is not JSON: {e}", retry=False)
    commands = {"poll": poll, "health": health}
    command = request.get("command")
    if command not in commands:
        fail(f"unknown command {command!r} (supported: poll, health)", retry=False)
    commands[command](request)


if __name__ == "__main__":
    main()
