"""BentoML services: thin shells over rgops functions."""
