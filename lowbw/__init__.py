"""lowbw: Matrix for things that talk at 100 bits per second."""

__version__ = "0.1.0"
