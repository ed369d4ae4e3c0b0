"""coinference: device-edge co-inference — split, communication-aware pruning, learned feature coding."""

__version__ = "0.1.0"
