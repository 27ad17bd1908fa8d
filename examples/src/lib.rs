//! Holds no code: the examples are the `[[example]]` targets beside this folder.
