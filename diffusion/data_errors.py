"""DataError, on its own: what every loader and checker of input data raises.  A leaf module,
so that code which only checks or decodes data (a table's schema and encoder, carried into a
served model) does not import the loaders and their libraries (Pillow, scikit-learn's datasets)."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used: the message says where, what and what is accepted."""
