"""cli: the application (the single-file image, its config, the fim-* commands and `fim`)."""
