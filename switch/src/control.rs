//! Runtime control API on a Unix socket. (Being written.)
