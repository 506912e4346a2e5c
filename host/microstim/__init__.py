"""microstim: host tooling and virtual board for the microstim microcurrent device."""

__version__ = "0.1.0"
