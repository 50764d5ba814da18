//! The code generated from `proto/pms_admin.proto` and `proto/pms_internal.proto`. Invariant: crate-private; every type here is
//! converted to or from a plain Rust type in `admin::convert` before it leaves this crate.

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod admin_v1 {
    tonic::include_proto!("pms.admin.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod internal_v1 {
    tonic::include_proto!("pms.internal.v1");
}
