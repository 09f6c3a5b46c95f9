"""Floor 1: the parameter table (pure data), its meta-device build and grouping.

See docs/architecture.md for the floors and what each may import.
"""
