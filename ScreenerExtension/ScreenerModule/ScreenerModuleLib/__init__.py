"""Logic of the Screener Slicer module, free of Qt so that it also runs under plain Python with slicer-core.

Modules that import ScreenerCore (and with it torch) are imported by name where needed, so
`dependencies` works before the Python packages are installed.
"""
