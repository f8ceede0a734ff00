"""
Pipelines: compile C{pipelines:} config into routing graphs and route events
through them (contract §3).  Pure code: no I/O, no reactor.
"""
from __future__ import annotations

from ductile.pipelines.compiler import Pipeline, PipelineError, Pipelines, compile_pipelines
from ductile.pipelines.expressions import ExpressionError
from ductile.pipelines.router import Dispatch, RelayDispatch, Router, UnknownPipeline

__all__ = [
    "Dispatch", "ExpressionError", "Pipeline", "PipelineError", "Pipelines", "RelayDispatch",
    "Router", "UnknownPipeline", "compile_pipelines",
]
