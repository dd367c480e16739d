"""fimfs: the filesystems of fim (DwarFS layers, union, case folding) and their FUSE adapter.

Knows nothing about images, configs or sandboxes; never imports `cli` or `sandbox`.
"""
