"""The package version, apart from `__init__` so that modules can name it without importing
the package that lazily imports them."""

__version__ = "0.2.0"
