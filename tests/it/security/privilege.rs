//! See [`super`]: the privilege area of the security suite.
