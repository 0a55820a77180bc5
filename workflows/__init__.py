"""Workflow specs, validation, expressions and the pure execution engine (not built yet:
see the workflow issue). The package exists so the layout and import rules hold from day one."""

__all__: list[str] = []
