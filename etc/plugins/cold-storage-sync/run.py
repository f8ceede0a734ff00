#!/usr/bin/env python3
"""
cold-storage-sync: a ductile protocol-2 plugin (stdlib only).

handle: copy the archive named by the triggering event
(request.event.payload.archive_path, archive_id, optional sha256) to

    <config.destination_dir>/<archive_id>/<file name>

and emit

    backup.stored  {archive_id, stored_path, sha256}
    dedupe_key     backup.stored:<archive_id>

The copy is atomic: it is written to a temporary file in the target
directory, fsynced, checked against the expected SHA-256 and only then
renamed into place, so a crash never leaves a half-written archive under its
final name. It is idempotent by archive_id: when the destination already
holds a file of the same size and SHA-256, nothing is copied (result
"already stored ..."). A destination with different content is never
overwritten.

destination_dir must be an absolute path: the plugin runs in the daemon's
working directory, not next to the config file.

Protocol: one JSON request on stdin, exactly one JSON response on stdout,
diagnostics on stderr only.
"""
import hashlib
import json
import os
import re
import stat
import sys
import tempfile

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def reply(**response):
    """Write the one response object and stop."""
    json.dump(response, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(0)


def fail(message, retry=True):
    print(f"cold-storage-sync: {message}", file=sys.stderr)
    reply(status="error", error=message, retry=retry)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def destination_dir_from(config):
    destination = config.get("destination_dir")
    if not isinstance(destination, str) or not destination.strip():
        fail("config destination_dir must be a non-empty path", retry=False)
    destination = os.path.expanduser(destination.strip())
    if not os.path.isabs(destination):
        fail(f"config destination_dir must be an absolute path, got {destination!r} "
             "(plugins run in the daemon's working directory)", retry=False)
    return destination


def copy_atomically(source, target):
    """Copy source to target via a synced temporary file; return the SHA-256."""
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(target) + ".", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        return digest.hexdigest(), tmp
    except BaseException:
        os.unlink(tmp)
        raise


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def handle(request):
    destination = destination_dir_from(request.get("config") or {})
    payload = (request.get("event") or {}).get("payload") or {}
    source = payload.get("archive_path")
    if not isinstance(source, str) or not os.path.isabs(source):
        fail(f"event payload archive_path must be an absolute path, got {source!r}", retry=False)
    archive_id = payload.get("archive_id")
    if not isinstance(archive_id, str) or not SAFE_ID.match(archive_id):
        # It becomes a directory name: no "/", no "..", no surprises.
        fail(f"event payload archive_id must match {SAFE_ID.pattern}, got {archive_id!r}", retry=False)
    expected = payload.get("sha256")
    expected = str(expected).lower() if expected else None

    try:
        source_st = os.stat(source)
    except FileNotFoundError:
        fail(f"archive not found: {source} (will retry in case it is still arriving, "
             "e.g. on a network filesystem)", retry=True)
    except OSError as e:
        fail(f"cannot stat archive {source}: {e.strerror or e}")
    if not stat.S_ISREG(source_st.st_mode):
        fail(f"archive {source} is not a regular file", retry=False)

    target_dir = os.path.join(destination, archive_id)
    target = os.path.join(target_dir, os.path.basename(source))
    stored = {"archive_id": archive_id, "stored_path": target}
    event = {"type": "backup.stored", "dedupe_key": f"backup.stored:{archive_id}"}

    try:
        if os.path.exists(target):
            want = expected or sha256_of(source)
            have = sha256_of(target)
            if os.path.getsize(target) == source_st.st_size and have == want:
                reply(status="ok", result=f"already stored {archive_id} at {target}",
                      events=[{**event, "payload": {**stored, "sha256": have}}])
            fail(f"{target} already exists with different content (sha256 {have}, "
                 f"expected {want}); refusing to overwrite it", retry=False)

        os.makedirs(target_dir, exist_ok=True)
        digest, tmp = copy_atomically(source, target)
        if expected and digest != expected:
            os.unlink(tmp)
            fail(f"checksum mismatch while copying {source}: expected sha256 {expected}, "
                 f"got {digest}; nothing stored", retry=False)
        os.replace(tmp, target)
        fsync_dir(target_dir)
    except OSError as e:
        fail(f"cannot store {source} in {target_dir}: {e.strerror or e}")
    print(f"cold-storage-sync: stored {source} as {target}", file=sys.stderr)
    reply(status="ok", result=f"stored {archive_id} at {target} ({source_st.st_size} bytes)",
          events=[{**event, "payload": {**stored, "sha256": digest}}])


def health(request):
    destination = destination_dir_from(request.get("config") or {})
    if os.path.isdir(destination) and not os.access(destination, os.W_OK):
        fail(f"destination_dir {destination} is not writable", retry=False)
    reply(status="ok", result=f"healthy; storing into {destination}")


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        fail(f"request on stdin is not JSON: {e}", retry=False)
    commands = {"handle": handle, "health": health}
    command = request.get("command")
    if command not in commands:
        fail(f"unknown command {command!r} (supported: handle, health)", retry=False)
    commands[command](request)


if __name__ == "__main__":
    main()
