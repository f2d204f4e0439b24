"""Triton Python-backend models for dlinfer: ``model.py`` files defining ``TritonPythonModel``."""

__version__ = "0.1.0"
