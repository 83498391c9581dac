"""One module per on-disk format, owning its names, schema, writer and reader."""
