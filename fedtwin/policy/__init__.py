"""The policy: its spec, the flat parameter layout and model files, and the torch network."""
