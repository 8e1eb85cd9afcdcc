//! See [`super`]: the resources area of the security suite.
