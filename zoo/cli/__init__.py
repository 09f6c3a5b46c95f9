"""The ``zoo`` command line: a thin rich edge over the Python API."""
