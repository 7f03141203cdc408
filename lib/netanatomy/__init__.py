"""netanatomy: reproductions of five papers on the inner anatomy of convolutional networks."""

__version__ = "0.1.0"
