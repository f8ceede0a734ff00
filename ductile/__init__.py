"""ductile: an automation runtime on Twisted with authenticated remote event relay."""

__version__ = "0.1.0"
