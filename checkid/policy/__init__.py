"""Operator-editable policy files shipped with checkid (``default.py``)."""
