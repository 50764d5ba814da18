//! pms-sip
