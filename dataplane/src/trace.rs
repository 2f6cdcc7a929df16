//! A packet tracer over the rules Portico emits (filled in below).
