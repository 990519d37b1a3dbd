"""seedfarm coordinator: specs, expansion, infotext, stores, grids, CLI. Never imports torch."""

__version__ = "0.1.0"
