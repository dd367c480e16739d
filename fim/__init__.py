"""fim: FlatImage rebuilt in Python, installed under one import name.

The repository keeps its folders at the top (app/, cli/, fimfs/, sandbox/, osutil/);
this package maps them under ``fim.`` with one symbolic link each, so an install puts
only ``fim`` into site-packages and every import in the code reads ``fim.<folder>``.
"""
