#!/usr/bin/env python3
"""
backup-verifier: a ductile protocol-2 plugin (stdlib only).

handle: verify the archive named by the triggering event
(request.event.payload, e.g. from backup.ready):

  - archive_path must name an existing, non-empty regular file;
  - its SHA-256 must equal payload.sha256 and its size payload.size_bytes,
    when the payload carries them.

On success it emits

    backup.verified  {...the incoming payload..., sha256, size_bytes, verified_at}
    dedupe_key       backup.verified:<archive_id>

and in a pipeline the next step receives that event. A checksum or size
mismatch fails with retry: false (the bytes will not change by retrying); a
missing file fails with retry: true, in case it is still arriving (e.g. NFS
attribute caching), and says so.

Protocol: one JSON request on stdin, exactly one JSON response on stdout,
diagnostics on stderr only.
"""
import hashlib
import json
import os
import stat
import sys
from datetime import datetime, timezone


def reply(**response):
    """Write the one response object and stop."""
    json.dump(response, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(0)


def fail(message, retry=True):
    print(f"backup-verifier: {message}", file=sys.stderr)
    reply(status="error", error=message, retry=retry)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def handle(request):
    payload = (request.get("event") or {}).get("payload") or {}
    path = payload.get("archive_path")
    if not isinstance(path, str) or not os.path.isabs(path):
        fail(f"event payload archive_path must be an absolute path, got {path!r}", retry=False)
    archive_id = payload.get("archive_id") or os.path.basename(path)

    try:
        st = os.stat(path)
    except FileNotFoundError:
        fail(f"archive not found: {path} (will retry in case it is still arriving, "
             "e.g. on a network filesystem)", retry=True)
    except OSError as e:
        fail(f"cannot stat archive {path}: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        fail(f"archive {path} is not a regular file", retry=False)
    if st.st_size == 0:
        fail(f"archive {path} is empty", retry=False)

    try:
        digest = sha256_of(path)
    except OSError as e:
        fail(f"cannot read archive {path}: {e.strerror or e}")
    expected = payload.get("sha256")
    if expected and str(expected).lower() != digest:
        fail(f"checksum mismatch for {path}: expected sha256 {expected}, got {digest}", retry=False)
    expected_size = payload.get("size_bytes")
    if expected_size is not None and expected_size != st.st_size:
        fail(f"size mismatch for {path}: expected {expected_size} bytes, got {st.st_size}", retry=False)

    # Pass the payload on, minus what the runtime added to it (the ductile_*
    # context fields and the previous step's result).
    passed = {k: v for k, v in payload.items() if not k.startswith("ductile_") and k != "result"}
    verified_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    reply(
        status="ok",
        result=f"verified {archive_id} ({st.st_size} bytes, sha256 {digest})",
        events=[{
            "type": "backup.verified",
            "payload": {**passed, "archive_id": archive_id, "sha256": digest,
                        "size_bytes": st.st_size, "verified_at": verified_at},
            "dedupe_key": f"backup.verified:{archive_id}",
        }],
    )


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        fail(f"request on stdin is not JSON: {e}", retry=False)
    command = request.get("command")
    if command == "handle":
        handle(request)
    elif command == "health":
        reply(status="ok", result="healthy")
    else:
        fail(f"unknown command {command!r} (supported: handle, health)", retry=False)


if __name__ == "__main__":
    main()
