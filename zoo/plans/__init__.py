"""Floor 2: plans (pure data), policy binding, freeze/apply, checks and schedules.

See docs/architecture.md for the floors and what each may import.
"""
