"""Floor 0: the checks of untrusted values, specs, policy arguments, the plugin host, the catalog.

It imports nothing of zoo but :mod:`zoo.errors` and :mod:`zoo.hookspecs`; see
docs/architecture.md for the floors and what each may import.
"""
