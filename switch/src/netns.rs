//! Network namespaces. (Being written.)
