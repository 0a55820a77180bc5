"""Agents shipped with DafnckMachine as working examples (the README's demo uses them)."""

__all__: list[str] = []
