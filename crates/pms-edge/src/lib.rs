//! pms-edge
