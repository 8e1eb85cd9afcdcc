//! See [`super`]: the routing area of the security suite.
