"""The test suite (pytest): tiny randomly initialised models and files the tests write; no downloads."""
