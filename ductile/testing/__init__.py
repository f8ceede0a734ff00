"""
Helpers for testing code built on ductile (and for ductile's own tests).
"""
