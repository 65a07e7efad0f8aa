//! One configuration problem with its key path ([`Problem`]), what `validate` reports: the
//! shape every edgepipe component reports config errors in, from `edgepipe-types`.

pub use edgepipe_types::config::Problem;
