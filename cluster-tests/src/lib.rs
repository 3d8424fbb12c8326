//! Multi-process cluster tests.
