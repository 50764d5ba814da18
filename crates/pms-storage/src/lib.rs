//! pms-storage
