"""TRAITS: the Trusted AI Toolkit for Scientists."""

__version__ = "0.1.0"

