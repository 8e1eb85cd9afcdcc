//! See [`super`]: the durability area of the security suite.
