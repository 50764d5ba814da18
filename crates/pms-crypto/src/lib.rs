//! pms-crypto
