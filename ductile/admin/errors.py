"""The one error the manhole raises for a configuration it will not run."""
from __future__ import annotations


class AdminConfigError(Exception):
    """
    C{admin.manhole} cannot be served as configured.  The message is meant
    for the operator: it names the setting or file and says what to do.
    """
