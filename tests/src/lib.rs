//! Test support shared by Mizzen's end-to-end tests (the tests themselves
//! live in tests/): the sandbox and a worker run's results ([`worker`]), and
//! a fake Kubernetes API server for the Kubernetes executor ([`fake_kube`]),
//! a fake of GitHub's API for check runs ([`fake_github`]), and a small npm
//! registry ([`npm_registry`]).

pub mod fake_github;
pub mod fake_kube;
pub mod npm_registry;
pub mod worker;
