"""maskkit: a command-line toolkit for mask / gender / age face-classification competitions."""

__version__ = "0.1.0"
