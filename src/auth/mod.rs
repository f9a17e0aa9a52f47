//! Credentials and token exchanges.
//!
//! On a route: [`credential`] finds the token a request presents and what it proves (the
//! [`shared`] token or a UC [`token`]); [`policy`] decides whether the route opens to it and
//! yields the [`Permit`] the forwarder acts on.
//!
//! At the exchange endpoints: each exchange ([`password`], [`kerberos`], [`cas`], [`oidc`]) is
//! one [`Exchange`]: it proves a login from the request, under the brute-force protection of
//! [`throttle`], and the one [`Issuer`] turns the proven login into the `{login, token, TTL}`
//! answer, once the directory allows it. Exchanges get their own provider and the attempt's
//! narrow facts, never the whole runtime state.
//!
//! With `[xuc]`, a UC token ucgate did not sign may be one of the site's xuc: [`xuc`] checks it
//! there and vouches for it in the token cache.

pub mod cas;
pub mod credential;
pub mod exchange;
pub mod issuer;
pub mod jose;
pub mod kerberos;
pub mod oidc;
pub mod password;
pub mod policy;
pub mod revocations;
pub mod session;
pub mod shared;
pub mod standing;
pub mod throttle;
pub mod token;
pub mod xuc;

pub use credential::{Credential, presented};
pub use exchange::Attempt;
pub use issuer::Issuer;
pub use policy::{Permit, Policy};
pub use shared::SharedToken;
