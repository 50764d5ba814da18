//! pms-replication
