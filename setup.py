"""
Packaging shim.

The twistd plugin lives in C{twisted/plugins/} at the top level, a namespace
that must never get an C{__init__.py} (installing one would overwrite
Twisted's own).  C{find_packages} cannot see it, so it is listed here by hand.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ductile", "ductile.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["ductile_plugin.py"]},
)
