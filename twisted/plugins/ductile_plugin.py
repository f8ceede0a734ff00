"""
twistd dropin for C{twistd ductile}.

Kept tiny on purpose: every twistd/trial start imports every dropin, so the
application itself is imported lazily by L{ServiceMaker} from C{ductile.tap}.
"""
from twisted.application.service import ServiceMaker

ductile = ServiceMaker(
    "ductile",
    "ductile.tap",
    "Ductile automation runtime with remote event relay.",
    "ductile",
)
