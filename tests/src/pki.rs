//! Certificates for TLS tests, made with openssl: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate, and a client certificate from another CA.
use crate::run;

/// A test CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a
/// client certificate from another CA.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// Makes the certificates (a second or so of openssl).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f).display().to_string();
        for ca in ["ca", "other-ca"] {
            run(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=moonfrp test {ca}"),
                    "-keyout",
                    &p(&format!("{ca}.key")),
                    "-out",
                    &p(&format!("{ca}.pem")),
                ],
            );
        }
        let ext = dir.path().join("ext.cnf");
        std::fs::write(
            &ext,
            "[server]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
             [client]\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, ca, section) in [
            ("server", "ca", "server"),
            ("client", "ca", "client"),
            ("stranger", "other-ca", "client"),
        ] {
            run(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &p(&format!("{name}.key")),
                    "-out",
                    &p(&format!("{name}.csr")),
                ],
            );
            run(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &p(&format!("{name}.csr")),
                    "-CA",
                    &p(&format!("{ca}.pem")),
                    "-CAkey",
                    &p(&format!("{ca}.key")),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &ext.display().to_string(),
                    "-extensions",
                    section,
                    "-out",
                    &p(&format!("{name}.pem")),
                ],
            );
        }
        Self { dir }
    }

    /// The path of one of its files: `ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`,
    /// `stranger.pem`/`.key`.
    pub fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}
