//! Configuration file (TOML). (Being written.)
