"""Floor 4: the adapt job: data, training, the feature cache, distributed runs, evaluation,
history and predict.

See docs/architecture.md for the floors and what each may import.
"""
