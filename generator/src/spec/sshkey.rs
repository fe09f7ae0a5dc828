//! OpenSSH public keys (`authorized_keys` lines without options), parsed and checked:
//! the key type, the base64 blob, the blob's own type string, and the key length.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A checked OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    algorithm: String,
    blob: String,
    comment: Option<String>,
}

impl SshPublicKey {
    /// The key type, for example `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }
    /// The comment, when present.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }
}

impl fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, self.blob)?;
        if let Some(c) = &self.comment {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

const PRIVATE_MARKERS: [&str; 3] = ["PRIVATE KEY", "BEGIN OPENSSH", "BEGIN RSA"];

impl FromStr for SshPublicKey {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        if PRIVATE_MARKERS.iter().any(|m| line.contains(m)) {
            return Err(
                "is a private key: give the public key (the .pub file), never a private one".into(),
            );
        }
        if line.contains(['\n', '\r']) || line.chars().any(|c| c.is_control() && c != '\t') {
            return Err("must be a single line without control characters".into());
        }
        let trimmed = line.trim();
        let mut parts = trimmed.splitn(3, [' ', '\t']);
        let algorithm = parts.next().unwrap_or("");
        if algorithm.is_empty() {
            return Err("must not be empty".into());
        }
        let Some(expected) = KeyType::from_name(algorithm) else {
            let hint = if algorithm.contains('=') || algorithm.contains(',') {
                " (authorized_keys options such as command= are not accepted)"
            } else {
                ""
            };
            return Err(format!(
                "has unsupported key type {algorithm:?}{hint}; expected one of ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-rsa, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com"
            ));
        };
        let blob = parts.next().unwrap_or("").trim();
        if blob.is_empty() {
            return Err(format!("has no key data after {algorithm:?}"));
        }
        let bytes = STANDARD.decode(blob).map_err(|e| {
            format!("has key data that is not valid base64 ({e}); is the key truncated?")
        })?;
        let mut r = Reader { buf: &bytes };
        let inner = r
            .string()
            .ok_or("has key data too short to hold a key type; is the key truncated?")?;
        if inner != algorithm.as_bytes() {
            return Err(format!(
                "declares type {algorithm:?} but its key data is of type {:?}",
                String::from_utf8_lossy(inner)
            ));
        }
        expected.check(&mut r)?;
        if !r.buf.is_empty() {
            return Err(format!(
                "has {} unexpected bytes after the key data",
                r.buf.len()
            ));
        }
        let comment = parts
            .next()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        Ok(SshPublicKey {
            algorithm: algorithm.to_string(),
            blob: blob.to_string(),
            comment,
        })
    }
}

#[derive(Clone, Copy)]
enum KeyType {
    Ed25519,
    SkEd25519,
    Ecdsa(&'static str, usize),
    SkEcdsa,
    Rsa,
}

impl KeyType {
    fn from_name(name: &str) -> Option<KeyType> {
        Some(match name {
            "ssh-ed25519" => KeyType::Ed25519,
            "sk-ssh-ed25519@openssh.com" => KeyType::SkEd25519,
            "ecdsa-sha2-nistp256" => KeyType::Ecdsa("nistp256", 65),
            "ecdsa-sha2-nistp384" => KeyType::Ecdsa("nistp384", 97),
            "ecdsa-sha2-nistp521" => KeyType::Ecdsa("nistp521", 133),
            "sk-ecdsa-sha2-nistp256@openssh.com" => KeyType::SkEcdsa,
            "ssh-rsa" => KeyType::Rsa,
            _ => return None,
        })
    }

    fn check(self, r: &mut Reader<'_>) -> Result<(), String> {
        let truncated = || "has key data that ends early; is the key truncated?".to_string();
        match self {
            KeyType::Ed25519 | KeyType::SkEd25519 => {
                let key = r.string().ok_or_else(truncated)?;
                if key.len() != 32 {
                    return Err(format!(
                        "has an ed25519 key of {} bytes; expected 32",
                        key.len()
                    ));
                }
                if matches!(self, KeyType::SkEd25519) {
                    r.string().ok_or_else(truncated)?; // application
                }
            }
            KeyType::Ecdsa(curve, point_len) => {
                let c = r.string().ok_or_else(truncated)?;
                if c != curve.as_bytes() {
                    return Err(format!(
                        "names curve {:?}; expected {curve:?}",
                        String::from_utf8_lossy(c)
                    ));
                }
                let point = r.string().ok_or_else(truncated)?;
                if point.len() != point_len || point.first() != Some(&4) {
                    return Err(format!(
                        "has an ECDSA point of {} bytes; expected an uncompressed point of {point_len}",
                        point.len()
                    ));
                }
            }
            KeyType::SkEcdsa => {
                let c = r.string().ok_or_else(truncated)?;
                if c != b"nistp256" {
                    return Err("names a curve other than nistp256".into());
                }
                let point = r.string().ok_or_else(truncated)?;
                if point.len() != 65 {
                    return Err(format!(
                        "has an ECDSA point of {} bytes; expected 65",
                        point.len()
                    ));
                }
                r.string().ok_or_else(truncated)?;
            }
            KeyType::Rsa => {
                let e = r.string().ok_or_else(truncated)?;
                let n = r.string().ok_or_else(truncated)?;
                if e.is_empty() || n.is_empty() {
                    return Err(truncated());
                }
                let n = strip_leading_zeros(n);
                // An all-zero modulus strips to nothing: no key at all, and no bit length.
                let Some(top) = n.first() else {
                    return Err("has an RSA modulus of zero; it is not a usable key".into());
                };
                let bits = n.len() * 8 - top.leading_zeros() as usize;
                if bits < 2048 {
                    return Err(format!(
                        "is an RSA key of {bits} bits; at least 2048 bits are required"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let rest = &self.buf[4..];
        if rest.len() < len {
            return None;
        }
        let (s, tail) = rest.split_at(len);
        self.buf = tail;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(parts: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        STANDARD.encode(out)
    }

    #[test]
    fn ed25519_round_trips_with_comment() {
        let line = format!(
            "ssh-ed25519 {} alice@example",
            blob(&[b"ssh-ed25519", &[7u8; 32]])
        );
        let key: SshPublicKey = line.parse().unwrap();
        assert_eq!(key.to_string(), line);
        assert_eq!(key.comment(), Some("alice@example"));
    }

    #[test]
    fn rejects_truncated_mismatched_short_and_private() {
        let good = blob(&[b"ssh-ed25519", &[7u8; 32]]);
        let truncated = &good[..good.len() - 8];
        assert!(
            format!("ssh-ed25519 {truncated}")
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("truncated")
        );
        let err = format!("ssh-rsa {good}")
            .parse::<SshPublicKey>()
            .unwrap_err();
        assert!(err.contains("key data is of type \"ssh-ed25519\""), "{err}");
        let small_rsa = blob(&[b"ssh-rsa", &[1, 0, 1], &[0xff; 128]]);
        assert!(
            format!("ssh-rsa {small_rsa}")
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("1024 bits")
        );
        let big_rsa = blob(&[b"ssh-rsa", &[1, 0, 1], &[0xff; 256]]);
        assert!(format!("ssh-rsa {big_rsa}").parse::<SshPublicKey>().is_ok());
        assert!(
            "-----BEGIN OPENSSH PRIVATE KEY-----"
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("private key")
        );
        assert!(
            "command=\"x\" ssh-ed25519 AAAA"
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("options")
        );
        assert!(
            format!("ssh-ed25519 {good} a\nssh-rsa b")
                .parse::<SshPublicKey>()
                .is_err()
        );
    }

    #[test]
    fn rsa_key_with_an_all_zero_modulus_is_refused() {
        for n in [&[0u8; 1][..], &[0u8; 257][..]] {
            let zero = blob(&[b"ssh-rsa", &[1, 0, 1], n]);
            let err = format!("ssh-rsa {zero}")
                .parse::<SshPublicKey>()
                .unwrap_err();
            assert!(err.contains("RSA modulus of zero"), "{err}");
        }
    }
}
