//! Test support shared by the workspace's tests.
