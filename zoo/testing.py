"""pytest plugin for zoo plugin authors (fixtures and checks); see docs/writing-plugins.md."""
