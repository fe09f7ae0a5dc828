//! Pure issuance: a `Certificate`'s spec read into a [`Request`], whether an existing Secret
//! still satisfies it ([`needs_issuance`]), and new key material ([`issue`]), self-signed or
//! signed by a CA key pair. No I/O; the private key never leaves [`Issued::tls_key`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::Value;
use time::OffsetDateTime;
use x509_parser::pem::Pem;

/// cert-manager's default `spec.duration` (90 days).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The group of cert-manager's own issuers.
pub const ISSUER_GROUP: &str = "cert-manager.io";

/// A problem with a spec or with key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The Certificate's spec cannot be honoured.
    #[error("invalid Certificate spec: {0}")]
    Spec(String),
    /// The CA key pair cannot be used.
    #[error("CA key pair: {0}")]
    Ca(String),
    /// rcgen refused to build the certificate.
    #[error("cannot build the certificate: {0}")]
    Build(#[from] rcgen::Error),
}

/// `spec.issuerRef`, with cert-manager's defaults (kind `Issuer`, group `cert-manager.io`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerRef {
    /// The issuer's name.
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    pub kind: String,
    /// `cert-manager.io` for cert-manager's issuers.
    pub group: String,
}

/// The key algorithm of `spec.privateKey`. This stand-in makes ECDSA and Ed25519 keys only
/// (PKCS#8): `RSA` (cert-manager's default) is served by an ECDSA P-256 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 (also used for `RSA`).
    EcdsaP256,
    /// ECDSA P-384 (`algorithm: ECDSA`, `size: 384`).
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// What a `Certificate` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `spec.secretName`.
    pub secret_name: String,
    /// `spec.issuerRef`.
    pub issuer: IssuerRef,
    /// `spec.commonName`.
    pub common_name: Option<String>,
    /// `spec.subject.organizations`.
    pub organizations: Vec<String>,
    /// `spec.dnsNames`.
    pub dns_names: Vec<String>,
    /// `spec.ipAddresses`.
    pub ip_addresses: Vec<IpAddr>,
    /// `spec.uris`.
    pub uris: Vec<String>,
    /// `spec.emailAddresses`.
    pub email_addresses: Vec<String>,
    /// `spec.isCA`.
    pub is_ca: bool,
    /// `spec.duration` (default 90 days).
    pub duration: Duration,
    /// `spec.renewBefore`, else `spec.renewBeforePercentage`, else a third of the duration.
    pub renew_before: Duration,
    /// `spec.usages` (default digital signature and key encipherment; `cert sign` added for a CA).
    pub key_usages: Vec<KeyUsagePurpose>,
    /// The extended key usages among `spec.usages`.
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// `spec.privateKey.algorithm` and `size`.
    pub key_algorithm: KeyAlgorithm,
}

fn strings(v: &Value) -> Result<Vec<String>, IssueError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| IssueError::Spec(format!("expected strings, got {s}")))
            })
            .collect(),
        other => Err(IssueError::Spec(format!("expected a list, got {other}"))),
    }
}

/// Parses a Go duration (`2160h`, `1h30m`, `8760h0m0s`, `90s`, `1.5h`).
pub fn parse_go_duration(s: &str) -> Result<Duration, IssueError> {
    let bad = || IssueError::Spec(format!("{s:?} is not a duration (like 2160h or 1h30m)"));
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

fn usage(name: &str, req: &mut Request) -> Result<(), IssueError> {
    use ExtendedKeyUsagePurpose as E;
    use KeyUsagePurpose as K;
    let (k, e) = match name {
        "signing" | "digital signature" => (Some(K::DigitalSignature), None),
        "content commitment" => (Some(K::ContentCommitment), None),
        "key encipherment" => (Some(K::KeyEncipherment), None),
        "key agreement" => (Some(K::KeyAgreement), None),
        "data encipherment" => (Some(K::DataEncipherment), None),
        "cert sign" => (Some(K::KeyCertSign), None),
        "crl sign" => (Some(K::CrlSign), None),
        "encipher only" => (Some(K::EncipherOnly), None),
        "decipher only" => (Some(K::DecipherOnly), None),
        "any" => (None, Some(E::Any)),
        "server auth" => (None, Some(E::ServerAuth)),
        "client auth" => (None, Some(E::ClientAuth)),
        "code signing" => (None, Some(E::CodeSigning)),
        "email protection" | "s/mime" => (None, Some(E::EmailProtection)),
        "timestamping" => (None, Some(E::TimeStamping)),
        "ocsp signing" => (None, Some(E::OcspSigning)),
        other => {
            return Err(IssueError::Spec(format!(
                "usage {other:?} is not supported by this stand-in"
            )));
        }
    };
    if let Some(k) = k
        && !req.key_usages.contains(&k)
    {
        req.key_usages.push(k);
    }
    if let Some(e) = e
        && !req.extended_key_usages.contains(&e)
    {
        req.extended_key_usages.push(e);
    }
    Ok(())
}

impl Request {
    /// Reads a `Certificate`'s `spec` with cert-manager's defaults.
    pub fn from_spec(spec: &Value) -> Result<Request, IssueError> {
        let secret_name = spec["secretName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IssueError::Spec("spec.secretName is required".into()))?
            .to_string();
        let issuer = IssuerRef {
            name: spec["issuerRef"]["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| IssueError::Spec("spec.issuerRef.name is required".into()))?
                .to_string(),
            kind: spec["issuerRef"]["kind"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("Issuer")
                .to_string(),
            group: spec["issuerRef"]["group"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(ISSUER_GROUP)
                .to_string(),
        };
        let ip_addresses = strings(&spec["ipAddresses"])?
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| IssueError::Spec(format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let duration = match spec["duration"].as_str() {
            Some(d) => parse_go_duration(d)?,
            None => DEFAULT_DURATION,
        };
        if duration.is_zero() {
            return Err(IssueError::Spec("spec.duration must be positive".into()));
        }
        let renew_before = match (
            spec["renewBefore"].as_str(),
            spec["renewBeforePercentage"].as_u64(),
        ) {
            (Some(r), _) => parse_go_duration(r)?,
            (None, Some(p)) => duration.mul_f64(p.min(100) as f64 / 100.0),
            (None, None) => duration / 3,
        };
        let key_algorithm = match (
            spec["privateKey"]["algorithm"].as_str(),
            spec["privateKey"]["size"].as_u64(),
        ) {
            (Some("Ed25519"), _) => KeyAlgorithm::Ed25519,
            (Some("ECDSA"), Some(384)) => KeyAlgorithm::EcdsaP384,
            (Some("ECDSA"), Some(521)) => {
                return Err(IssueError::Spec(
                    "ECDSA P-521 is not supported by this stand-in".into(),
                ));
            }
            _ => KeyAlgorithm::EcdsaP256,
        };
        let mut req = Request {
            secret_name,
            issuer,
            common_name: spec["commonName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            organizations: strings(&spec["subject"]["organizations"])?,
            dns_names: strings(&spec["dnsNames"])?,
            ip_addresses,
            uris: strings(&spec["uris"])?,
            email_addresses: strings(&spec["emailAddresses"])?,
            is_ca: spec["isCA"].as_bool().unwrap_or(false),
            duration,
            renew_before,
            key_usages: Vec::new(),
            extended_key_usages: Vec::new(),
            key_algorithm,
        };
        let mut usages = strings(&spec["usages"])?;
        if usages.is_empty() {
            usages = vec!["digital signature".into(), "key encipherment".into()];
        }
        if req.is_ca {
            usages.push("cert sign".into());
        }
        for u in &usages {
            usage(u, &mut req)?;
        }
        if req.common_name.is_none()
            && req.dns_names.is_empty()
            && req.ip_addresses.is_empty()
            && req.uris.is_empty()
            && req.email_addresses.is_empty()
        {
            return Err(IssueError::Spec(
                "at least one of commonName, dnsNames, ipAddresses, uris or emailAddresses is required"
                    .into(),
            ));
        }
        Ok(req)
    }

    /// The subject alternative names, in cert-manager's order: DNS names, IP addresses, URIs,
    /// e-mail addresses.
    pub fn sans(&self) -> Result<Vec<SanType>, IssueError> {
        let ia5 = |s: &String| {
            rcgen::string::Ia5String::try_from(s.clone())
                .map_err(|_| IssueError::Spec(format!("{s:?} is not an ASCII name")))
        };
        let mut out = Vec::new();
        for d in &self.dns_names {
            out.push(SanType::DnsName(ia5(d)?));
        }
        for ip in &self.ip_addresses {
            out.push(SanType::IpAddress(*ip));
        }
        for u in &self.uris {
            out.push(SanType::URI(ia5(u)?));
        }
        for e in &self.email_addresses {
            out.push(SanType::Rfc822Name(ia5(e)?));
        }
        Ok(out)
    }

    fn params(
        &self,
        now: OffsetDateTime,
        cap: Option<OffsetDateTime>,
    ) -> Result<CertificateParams, IssueError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in &self.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(cn) = &self.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        p.distinguished_name = dn;
        p.subject_alt_names = self.sans()?;
        p.not_before = now;
        let mut not_after = now + self.duration;
        if let Some(cap) = cap
            && cap < not_after
        {
            // As cert-manager's CA issuer: never past the CA's own expiry.
            not_after = cap;
        }
        p.not_after = not_after;
        p.is_ca = if self.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = self.key_usages.clone();
        p.extended_key_usages = self.extended_key_usages.clone();
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

fn random_serial() -> Result<SerialNumber, IssueError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| IssueError::Spec("no randomness for a serial number".into()))?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&b))
}

/// A CA's key pair, as read from a CA issuer's Secret (`tls.crt` may hold a chain, leaf first).
pub struct CaKeyPair<'a> {
    /// `tls.crt` of the CA Secret (PEM).
    pub cert_pem: &'a str,
    /// `tls.key` of the CA Secret (PKCS#8 PEM).
    pub key_pem: &'a str,
}

/// New key material for a Secret of type `kubernetes.io/tls`.
pub struct Issued {
    /// `tls.crt`: the certificate, then the CA chain below the root for a CA issuer.
    pub tls_crt: String,
    /// `tls.key` (PKCS#8 PEM). Never logged.
    pub tls_key: String,
    /// `ca.crt`: the certificate itself for selfSigned, the CA's root otherwise.
    pub ca_crt: String,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The PEM blocks labelled CERTIFICATE in `pem`, in order, as DER.
pub fn pem_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Issues `req` now: self-signed without `ca`, else signed by `ca`.
pub fn issue(req: &Request, ca: Option<&CaKeyPair<'_>>) -> Result<Issued, IssueError> {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let key = KeyPair::generate_for(req.key_algorithm.rcgen())?;
    match ca {
        None => {
            let params = req.params(now, None)?;
            let cert = params.self_signed(&key)?;
            let pem = cert.pem();
            Ok(Issued {
                tls_crt: pem.clone(),
                tls_key: key.serialize_pem(),
                ca_crt: pem,
                not_before: params.not_before,
                not_after: params.not_after,
            })
        }
        Some(ca) => {
            let chain = pem_certs(ca.cert_pem.as_bytes());
            let Some(ca_der) = chain.first() else {
                return Err(IssueError::Ca("tls.crt holds no certificate".into()));
            };
            let ca_info =
                CertInfo::parse(ca_der).map_err(|e| IssueError::Ca(format!("tls.crt: {e}")))?;
            if !ca_info.is_ca {
                return Err(IssueError::Ca("tls.crt is not a CA certificate".into()));
            }
            let ca_key = KeyPair::from_pem(ca.key_pem)
                .map_err(|e| IssueError::Ca(format!("tls.key (PKCS#8 expected): {e}")))?;
            if ca_key.public_key_raw() != ca_info.public_key.as_slice() {
                return Err(IssueError::Ca("tls.key does not match tls.crt".into()));
            }
            let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key)
                .map_err(|e| IssueError::Ca(format!("tls.crt: {e}")))?;
            let params = req.params(now, Some(ca_info.not_after))?;
            let cert = params.signed_by(&key, &issuer)?;
            // The root: the chain's last certificate; a self-signed root is not repeated in
            // tls.crt (cert-manager's ParseSingleCertificateChain).
            let last = chain.last().unwrap_or(ca_der);
            let root_self_signed = CertInfo::parse(last).is_ok_and(|i| i.self_signed);
            let mut tls_crt = cert.pem();
            let upto = if root_self_signed {
                chain.len() - 1
            } else {
                chain.len()
            };
            for c in &chain[..upto] {
                tls_crt.push_str(&to_pem(c));
            }
            Ok(Issued {
                tls_crt,
                tls_key: key.serialize_pem(),
                ca_crt: to_pem(last),
                not_before: params.not_before,
                not_after: params.not_after,
            })
        }
    }
}

/// What this stand-in reads back from an issued certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: BTreeSet<String>,
    /// IP SANs.
    pub ip_addresses: BTreeSet<IpAddr>,
    /// URI SANs.
    pub uris: BTreeSet<String>,
    /// e-mail SANs.
    pub email_addresses: BTreeSet<String>,
    /// basicConstraints CA.
    pub is_ca: bool,
    /// Subject equals issuer.
    pub self_signed: bool,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// The subject public key (the BIT STRING's content).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// Parses one DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::extensions::GeneralName;
        let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let mut info = CertInfo {
            common_name: c
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            dns_names: BTreeSet::new(),
            ip_addresses: BTreeSet::new(),
            uris: BTreeSet::new(),
            email_addresses: BTreeSet::new(),
            is_ca: c.is_ca(),
            self_signed: c.subject() == c.issuer(),
            not_before: c.validity().not_before.to_datetime(),
            not_after: c.validity().not_after.to_datetime(),
            public_key: c.public_key().subject_public_key.data.to_vec(),
        };
        if let Ok(Some(san)) = c.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => {
                        info.dns_names.insert(d.to_string());
                    }
                    GeneralName::URI(u) => {
                        info.uris.insert(u.to_string());
                    }
                    GeneralName::RFC822Name(e) => {
                        info.email_addresses.insert(e.to_string());
                    }
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        info.ip_addresses.extend(ip);
                    }
                    _ => {}
                }
            }
        }
        Ok(info)
    }
}

/// The issuer a Secret's annotations name (`cert-manager.io/issuer-{name,kind,group}`).
pub fn issuer_from_annotations(annotations: &Value) -> IssuerRef {
    let get = |k: &str| annotations[k].as_str().unwrap_or_default().to_string();
    IssuerRef {
        name: get("cert-manager.io/issuer-name"),
        kind: get("cert-manager.io/issuer-kind"),
        group: get("cert-manager.io/issuer-group"),
    }
}

/// Why an existing Secret (its `data` decoded: `tls.crt`, `tls.key`; its annotations) no
/// longer satisfies `req` at `now`, or `None` when it still does (then it is kept).
pub fn needs_issuance(
    req: &Request,
    tls_crt: Option<&[u8]>,
    tls_key: Option<&[u8]>,
    annotations: &Value,
    now: OffsetDateTime,
) -> Option<String> {
    let (Some(crt), Some(key)) = (tls_crt, tls_key) else {
        return Some("the Secret has no tls.crt or tls.key".into());
    };
    let Some(der) = pem_certs(crt).into_iter().next() else {
        return Some("tls.crt holds no certificate".into());
    };
    let info = match CertInfo::parse(&der) {
        Ok(i) => i,
        Err(e) => return Some(format!("tls.crt cannot be parsed: {e}")),
    };
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|k| KeyPair::from_pem(k).ok());
    match key {
        None => return Some("tls.key cannot be parsed".into()),
        Some(k) if k.public_key_raw() != info.public_key.as_slice() => {
            return Some("tls.key does not match tls.crt".into());
        }
        Some(_) => {}
    }
    if issuer_from_annotations(annotations) != req.issuer {
        return Some("the Secret was issued by another issuer".into());
    }
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    if info.common_name != req.common_name
        || info.dns_names != set(&req.dns_names)
        || info.ip_addresses != req.ip_addresses.iter().copied().collect()
        || info.uris != set(&req.uris)
        || info.email_addresses != set(&req.email_addresses)
        || info.is_ca != req.is_ca
    {
        return Some("the certificate does not match the spec".into());
    }
    if now < info.not_before - time::Duration::minutes(5) {
        return Some("the certificate is not valid yet".into());
    }
    if now >= info.not_after - req.renew_before {
        return Some("the certificate is due for renewal".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "secretName": "webhook-tls",
            "issuerRef": {"name": "selfsigned", "kind": "Issuer"},
            "dnsNames": ["svc.ns.svc", "svc.ns.svc.cluster.local"],
            "ipAddresses": ["10.0.0.1", "::1"],
            "commonName": "svc",
        })
    }

    #[test]
    fn go_durations_parse_as_cert_manager_writes_them() {
        assert_eq!(
            parse_go_duration("2160h").unwrap(),
            Duration::from_secs(2160 * 3600)
        );
        assert_eq!(
            parse_go_duration("8760h0m0s").unwrap(),
            Duration::from_secs(8760 * 3600)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert!(parse_go_duration("90d").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn spec_defaults_follow_cert_manager() {
        let r = Request::from_spec(&spec()).unwrap();
        assert_eq!(r.duration, DEFAULT_DURATION);
        assert_eq!(r.renew_before, DEFAULT_DURATION / 3);
        assert_eq!(
            r.issuer,
            IssuerRef {
                name: "selfsigned".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into()
            }
        );
        assert_eq!(
            r.key_usages,
            [
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment
            ]
        );
        assert!(r.extended_key_usages.is_empty());
        assert!(!r.is_ca);
        let mut s = spec();
        s["isCA"] = json!(true);
        s["duration"] = json!("24h");
        s["usages"] = json!(["server auth", "digital signature"]);
        let r = Request::from_spec(&s).unwrap();
        assert!(r.is_ca);
        assert_eq!(r.duration, Duration::from_secs(86400));
        assert!(r.key_usages.contains(&KeyUsagePurpose::KeyCertSign));
        assert_eq!(r.extended_key_usages, [ExtendedKeyUsagePurpose::ServerAuth]);
    }

    #[test]
    fn spec_errors_are_reported() {
        let mut s = spec();
        s["ipAddresses"] = json!(["not-an-ip"]);
        assert!(
            Request::from_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("not-an-ip")
        );
        let s = json!({"secretName": "x", "issuerRef": {"name": "i"}});
        assert!(Request::from_spec(&s).is_err(), "no subject at all");
        let s = json!({"issuerRef": {"name": "i"}, "commonName": "x"});
        assert!(
            Request::from_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("secretName")
        );
    }

    #[test]
    fn sans_are_dns_then_ip_then_uri_then_email() {
        let mut s = spec();
        s["uris"] = json!(["spiffe://x/y"]);
        s["emailAddresses"] = json!(["a@b.c"]);
        let sans = Request::from_spec(&s).unwrap().sans().unwrap();
        let want = vec![
            SanType::DnsName("svc.ns.svc".try_into().unwrap()),
            SanType::DnsName("svc.ns.svc.cluster.local".try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
            SanType::URI("spiffe://x/y".try_into().unwrap()),
            SanType::Rfc822Name("a@b.c".try_into().unwrap()),
        ];
        assert_eq!(sans, want);
    }

    fn annotations(r: &Request) -> Value {
        json!({
            "cert-manager.io/issuer-name": r.issuer.name,
            "cert-manager.io/issuer-kind": r.issuer.kind,
            "cert-manager.io/issuer-group": r.issuer.group,
        })
    }

    #[test]
    fn self_signed_certificates_are_their_own_ca_and_are_kept_while_valid() {
        let r = Request::from_spec(&spec()).unwrap();
        let i = issue(&r, None).unwrap();
        assert_eq!(i.tls_crt, i.ca_crt);
        assert!(!format!("{i:?}").contains("PRIVATE"), "Debug shows no key");
        let info = CertInfo::parse(&pem_certs(i.tls_crt.as_bytes())[0]).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("svc"));
        assert!(info.dns_names.contains("svc.ns.svc.cluster.local"));
        assert!(info.ip_addresses.contains(&"::1".parse().unwrap()));
        assert!(info.self_signed && !info.is_ca);
        assert_eq!(info.not_after - info.not_before, time::Duration::days(90));
        let a = annotations(&r);
        let now = OffsetDateTime::now_utc();
        let check = |r: &Request, a: &Value, now| {
            needs_issuance(
                r,
                Some(i.tls_crt.as_bytes()),
                Some(i.tls_key.as_bytes()),
                a,
                now,
            )
        };
        assert_eq!(check(&r, &a, now), None);
        // Renewal at two thirds of the lifetime.
        assert!(check(&r, &a, now + time::Duration::days(61)).is_some());
        let mut other = r.clone();
        other.dns_names.push("extra".into());
        assert!(check(&other, &a, now).is_some());
        let mut other_issuer = a.clone();
        other_issuer["cert-manager.io/issuer-name"] = json!("x");
        assert!(check(&r, &other_issuer, now).is_some());
        let other_key = issue(&r, None).unwrap().tls_key;
        assert_eq!(
            needs_issuance(
                &r,
                Some(i.tls_crt.as_bytes()),
                Some(other_key.as_bytes()),
                &a,
                now
            )
            .as_deref(),
            Some("tls.key does not match tls.crt")
        );
        assert!(needs_issuance(&r, None, None, &a, now).is_some());
    }

    #[test]
    fn ca_issuers_sign_with_the_ca_key_and_cap_the_expiry() {
        let mut ca_spec = spec();
        ca_spec["isCA"] = json!(true);
        ca_spec["commonName"] = json!("my-ca");
        ca_spec["duration"] = json!("48h");
        let ca = issue(&Request::from_spec(&ca_spec).unwrap(), None).unwrap();
        let r = Request::from_spec(&spec()).unwrap();
        let leaf = issue(
            &r,
            Some(&CaKeyPair {
                cert_pem: &ca.tls_crt,
                key_pem: &ca.tls_key,
            }),
        )
        .unwrap();
        assert_eq!(leaf.ca_crt, ca.tls_crt);
        assert_eq!(
            pem_certs(leaf.tls_crt.as_bytes()).len(),
            1,
            "root not repeated"
        );
        let der = &pem_certs(leaf.tls_crt.as_bytes())[0];
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        let ca_der = &pem_certs(ca.tls_crt.as_bytes())[0];
        let (_, cac) = x509_parser::parse_x509_certificate(ca_der).unwrap();
        assert_eq!(c.issuer(), cac.subject());
        c.verify_signature(Some(cac.public_key())).unwrap();
        assert!(leaf.not_after <= ca.not_after);
        // A non-CA certificate cannot sign.
        let not_ca = issue(&r, None).unwrap();
        assert!(
            issue(
                &r,
                Some(&CaKeyPair {
                    cert_pem: &not_ca.tls_crt,
                    key_pem: &not_ca.tls_key
                })
            )
            .is_err()
        );
    }
}
