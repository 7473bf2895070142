//! Harness for the end-to-end tests: spawns the real binaries and brokers.
