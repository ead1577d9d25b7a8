"""Model sources, the served-model set, the hot-swapping loader and the fallback."""
