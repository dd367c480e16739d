"""sandbox: isolation of the programs fim runs (bubblewrap, permissions, portals).

Knows nothing about DwarFS; never imports `cli` or `fimfs`.
"""
