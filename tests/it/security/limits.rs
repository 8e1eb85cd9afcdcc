//! See [`super`]: the limits area of the security suite.
