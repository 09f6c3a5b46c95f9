"""Floor 3: safetensors files, the metadata schema, the store, weights, save and load.

See docs/architecture.md for the floors and what each may import.
"""
