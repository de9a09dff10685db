//! Integration tests live in `tests/`: they drive the built `kvmprof` and `kvmprof-testvmm` binaries.
