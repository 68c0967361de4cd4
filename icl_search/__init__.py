"""icl-search: find and serve the URIAL context that aligns a base LLM."""
__version__ = "0.1.0"
