"""
Exceptions that cross module boundaries.
"""


class StorageUnavailable(Exception):
    """
    The state database cannot take a write right now (locked, read-only,
    disk full).  Callers that face a client answer "try again later" (503 with
    C{Retry-After}) rather than a plain server error.
    """
