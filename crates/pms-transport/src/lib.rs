//! pms-transport
