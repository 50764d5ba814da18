//! The node's certificates in use: `node.crt` (the gRPC port and calls to other nodes),
//! `sip.crt` (the SIP TLS listener) and `ca.crt` they chain to. Loaded at start, `node.crt` and
//! `sip.crt` replaced on SIGHUP, and each one's expiry logged and exported as
//! `pms_certificate_expiry_timestamp_seconds{file}`.
//!
//! Invariant: a reload never stops the node and never leaves a listener without a certificate:
//! a file that cannot replace the one in use is logged with its path and the reason, and the
//! certificate in use stays.
//! Invariant: the metric shows the certificates being presented, never files that were refused.
//! Invariant: `ca.crt` is read at start only (servers verify peers against it); a new CA needs
//! every node restarted, which the runbook in `docs/operations.md` says.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use pms_crypto::{
    CA_CERT_FILE, CertificateInfo, CertificateRole, ReloadableCertificate, now_unix,
    read_certificate_info, rfc3339,
};
use pms_types::metrics::Metrics;
use tracing::{error, info, warn};

use crate::signals::ReloadRequested;

/// The node's reloadable certificates, shared by the servers and clients that present them.
pub struct NodeCertificates {
    /// `node.crt`/`node.key`: presented by the gRPC server and to other nodes.
    pub node: Arc<ReloadableCertificate>,
    /// `sip.crt`/`sip.key`: presented by the SIP TLS listener.
    pub sip: Arc<ReloadableCertificate>,
    metrics: Arc<Metrics>,
}

impl NodeCertificates {
    /// Loads the certificates from `certs_dir`, sets their expiry metrics, and warns about
    /// any that expire within [`pms_crypto::EXPIRY_WARNING_DAYS`].
    pub fn load(certs_dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let node = ReloadableCertificate::load(CertificateRole::Node, certs_dir)
            .context("node certificate (node.crt, node.key)")?;
        let sip = ReloadableCertificate::load(CertificateRole::Sip, certs_dir)
            .context("SIP TLS certificate (sip.crt, sip.key)")?;
        let ca = read_certificate_info(&certs_dir.join(CA_CERT_FILE))
            .context("CA certificate (ca.crt)")?;
        let certificates = NodeCertificates {
            node: Arc::new(node),
            sip: Arc::new(sip),
            metrics,
        };
        certificates.record(CA_CERT_FILE, &ca);
        let node = certificates.node.info();
        let sip = certificates.sip.info();
        certificates.record(CertificateRole::Node.cert_file(), &node);
        certificates.record(CertificateRole::Sip.cert_file(), &sip);
        info!(
            ca.crt = %describe(&ca),
            node.crt = %describe(&node),
            sip.crt = %describe(&sip),
            "certificates loaded"
        );
        Ok(certificates)
    }

    /// Reads `node.crt` and `sip.crt` again and presents each one that passes its checks from
    /// the next handshake on; logs what it did. Never fails: a refused file keeps its
    /// certificate in use, and the error says which file and why.
    pub fn reload(&self) {
        let mut reloaded: Vec<(&'static str, String)> = Vec::new();
        for certificate in [&self.node, &self.sip] {
            let file = certificate.role().cert_file();
            match certificate.reload() {
                Ok(outcome) => {
                    self.record(file, &outcome.info);
                    let what = if outcome.changed {
                        describe(&outcome.info)
                    } else {
                        format!("unchanged ({})", describe(&outcome.info))
                    };
                    reloaded.push((file, what));
                }
                Err(refusal) => {
                    error!(
                        file = %certificate.cert_path().display(),
                        error = %format!("{:#}", anyhow::Error::from(refusal)),
                        in_use = %describe(&certificate.info()),
                        "cannot reload {file}: keeping the certificate in use; fix the file and send SIGHUP again"
                    );
                }
            }
        }
        if reloaded.is_empty() {
            warn!("certificate reload changed nothing: every certificate in use is kept");
            return;
        }
        let kept = |file: &str| {
            reloaded
                .iter()
                .find(|(reloaded_file, _)| *reloaded_file == file)
                .map_or_else(
                    || "kept (refused, see the error above)".to_owned(),
                    |(_, what)| what.clone(),
                )
        };
        info!(
            node.crt = %kept(CertificateRole::Node.cert_file()),
            sip.crt = %kept(CertificateRole::Sip.cert_file()),
            "reloaded certificates"
        );
    }

    /// Exports `info`'s expiry and warns when it is near or past.
    fn record(&self, file: &str, info: &CertificateInfo) {
        self.metrics
            .certificate_expiry_timestamp_seconds
            .set(file, info.not_after_unix);
        let now = now_unix();
        let days_left = info.days_left(now);
        if days_left < 0 {
            error!(
                file,
                not_after = %rfc3339(info.not_after_unix),
                "{file} has EXPIRED: peers refuse it; make a new one and send SIGHUP (docs/operations.md, Certificate rotation)"
            );
        } else if info.expires_soon(now) {
            warn!(
                file,
                days_left,
                not_after = %rfc3339(info.not_after_unix),
                "{file} expires in {days_left} days: make a new one and send SIGHUP (docs/operations.md, Certificate rotation)"
            );
        }
    }
}

/// Reloads the certificates at every SIGHUP, for as long as the node runs.
pub async fn reload_on_request(certificates: Arc<NodeCertificates>, reload: ReloadRequested) {
    loop {
        reload.requested().await;
        certificates.reload();
    }
}

/// One certificate for the log: subject, expiry and serial.
fn describe(info: &CertificateInfo) -> String {
    format!(
        "subject {}, not after {}, serial {}",
        info.subject,
        rfc3339(info.not_after_unix),
        info.serial
    )
}
