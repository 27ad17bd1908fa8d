//! Holds no code of its own: the examples are the `[[example]]` targets beside this
//! folder. The repository's README and user guide are compiled here as doc tests, in an
//! unpublished crate, because they sit outside every published package.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}

#[cfg(doctest)]
#[doc = include_str!("../../docs/USER_GUIDE.md")]
mod user_guide {}
