//! Holds no code: see `tests/`. The library's end-to-end suites live in their own package
//! so that the published `entraid-emulator` does not depend on the library it tests.
