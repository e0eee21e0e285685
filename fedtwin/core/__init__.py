"""The base layer: errors, input limits, file formats and seeds; it imports nothing else of fedtwin."""
