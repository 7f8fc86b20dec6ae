//! `tracer serve --web.config.file PATH`: the Prometheus exporter-toolkit's
//! web configuration file, as node_exporter takes it: TLS
//! (`tls_server_config`), basic auth with bcrypt hashes (`basic_auth_users`)
//! and extra response headers (`http_server_config.headers`). The file is
//! read once, at start, before anything is attached: a file this exporter
//! cannot honour fully is an error, never a partial TLS setup. Paths in it
//! are relative to the file's directory, as in the toolkit.
//!
//! Not taken (each is a clear error when set): TLS 1.0/1.1 (rustls has
//! neither), `cipher_suites`, `curve_preferences`, `client_allowed_sans`,
//! and the client-auth types that accept unverified certificates
//! (`RequestClientCert`, `RequireAnyClientCert`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use hyper::header::{HeaderName, HeaderValue};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use yaml_rust2::{Yaml, YamlLoader};

/// What the file asks for, checked; TLS material already loaded.
#[derive(Default)]
pub struct WebConfig {
    /// rustls' server side, when `tls_server_config` names a certificate.
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic auth: user → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// How client certificates are treated (the toolkit's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    /// A certificate is optional; one that is sent must verify.
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// `tls_server_config`, parsed but not yet read from disk.
#[derive(Debug, Default, PartialEq)]
pub struct TlsSpec {
    pub cert: Option<Source>,
    pub key: Option<Source>,
    pub client_ca: Option<Source>,
    pub client_auth: ClientAuth,
    /// TLS 1.3 only (else 1.2 and 1.3).
    pub tls13_only: bool,
    /// TLS 1.2 only (`max_version: TLS12`).
    pub tls12_only: bool,
    /// The server's cipher-suite order wins (the toolkit's default).
    pub prefer_server_order: bool,
}

/// PEM given inline (`cert`) or by path (`cert_file`).
#[derive(Debug, PartialEq)]
pub enum Source {
    Inline(String),
    File(PathBuf),
}

impl Source {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Inline(s) => Ok(s.as_bytes().to_vec()),
            Source::File(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        }
    }
}

/// The file, parsed, before TLS material is read.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub tls: Option<TlsSpec>,
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Read, check and load the file at `path`.
pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--web.config.file: reading {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let parsed = parse(&text, dir)
        .map_err(|e| anyhow::anyhow!("--web.config.file {}: {e}", path.display()))?;
    let tls = match &parsed.tls {
        Some(spec) => Some(Arc::new(server_config(spec).with_context(|| {
            format!("--web.config.file {}: tls_server_config", path.display())
        })?)),
        None => None,
    };
    Ok(WebConfig {
        tls,
        users: parsed.users,
        headers: parsed.headers,
    })
}

/// One level of the file: a mapping with string keys, each key known.
fn mapping<'a>(
    y: &'a Yaml,
    what: &str,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a Yaml)>, String> {
    let h = match y {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(Vec::new()),
        _ => return Err(format!("{what} must be a mapping")),
    };
    let mut out = Vec::new();
    for (k, v) in h {
        let k = k
            .as_str()
            .ok_or_else(|| format!("{what}: keys must be strings"))?;
        if !known.contains(&k) {
            return Err(format!(
                "{what}: unknown key {k:?} (known: {})",
                known.join(", ")
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn string(v: &Yaml, key: &str) -> Result<String, String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Null => Ok(String::new()),
        _ => Err(format!("{key} must be a string")),
    }
}

fn boolean(v: &Yaml, key: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{key} must be true or false"))
}

/// Parse the file's text; relative paths are taken from `dir`. Pure: no
/// file is read.
pub fn parse(text: &str, dir: &Path) -> Result<Parsed, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut out = Parsed::default();
    let Some(root) = docs.first() else {
        return Ok(out);
    };
    if docs.len() > 1 {
        return Err("more than one YAML document".into());
    }
    let known = [
        "tls_server_config",
        "http_server_config",
        "basic_auth_users",
    ];
    for (k, v) in mapping(root, "the file", &known)? {
        match k {
            "tls_server_config" => out.tls = parse_tls(v, dir)?,
            "http_server_config" => out.headers = parse_http(v)?,
            _ => out.users = parse_users(v)?,
        }
    }
    Ok(out)
}

const TLS_KEYS: [&str; 13] = [
    "cert_file",
    "key_file",
    "cert",
    "key",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
    "cipher_suites",
    "curve_preferences",
    "client_allowed_sans",
];

/// `tls_server_config`; None when it names nothing (plain HTTP, as the
/// toolkit does for an empty section).
fn parse_tls(y: &Yaml, dir: &Path) -> Result<Option<TlsSpec>, String> {
    let mut spec = TlsSpec {
        prefer_server_order: true,
        ..Default::default()
    };
    let mut any = false;
    let file = |v: &Yaml, k: &str| -> Result<Option<Source>, String> {
        let s = string(v, k)?;
        Ok((!s.is_empty()).then(|| Source::File(dir.join(s))))
    };
    let inline = |v: &Yaml, k: &str| -> Result<Option<Source>, String> {
        let s = string(v, k)?;
        Ok((!s.is_empty()).then_some(Source::Inline(s)))
    };
    for (k, v) in mapping(y, "tls_server_config", &TLS_KEYS)? {
        let set = |slot: &mut Option<Source>, s: Option<Source>| -> Result<(), String> {
            if s.is_some() && slot.is_some() {
                return Err(format!(
                    "tls_server_config: {k} given with its inline/file twin"
                ));
            }
            if s.is_some() {
                *slot = s;
            }
            Ok(())
        };
        match k {
            "cert_file" => set(&mut spec.cert, file(v, k)?)?,
            "cert" => set(&mut spec.cert, inline(v, k)?)?,
            "key_file" => set(&mut spec.key, file(v, k)?)?,
            "key" => set(&mut spec.key, inline(v, k)?)?,
            "client_ca_file" => set(&mut spec.client_ca, file(v, k)?)?,
            "client_ca" => set(&mut spec.client_ca, inline(v, k)?)?,
            "client_auth_type" => spec.client_auth = client_auth(&string(v, k)?)?,
            "min_version" => spec.tls13_only = version(&string(v, k)?, k)? == 13,
            "max_version" => spec.tls12_only = version(&string(v, k)?, k)? == 12,
            "prefer_server_cipher_suites" => spec.prefer_server_order = boolean(v, k)?,
            _ => {
                if !matches!(v, Yaml::Null) && v.as_vec().is_none_or(|l| !l.is_empty()) {
                    return Err(format!(
                        "tls_server_config: {k} is not supported (rustls' defaults apply)"
                    ));
                }
                continue;
            }
        }
        any |= !matches!(v, Yaml::Null);
    }
    check_tls(spec, any)
}

/// The toolkit's consistency rules.
fn check_tls(spec: TlsSpec, any: bool) -> Result<Option<TlsSpec>, String> {
    let nothing = spec.cert.is_none()
        && spec.key.is_none()
        && spec.client_ca.is_none()
        && spec.client_auth == ClientAuth::NoClientCert;
    if nothing && !any {
        return Ok(None);
    }
    if spec.cert.is_none() {
        return Err("tls_server_config: missing one of cert or cert_file".into());
    }
    if spec.key.is_none() {
        return Err("tls_server_config: missing one of key or key_file".into());
    }
    if spec.tls13_only && spec.tls12_only {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    match (spec.client_auth, &spec.client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => Err(
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert".into(),
        ),
        (ClientAuth::NoClientCert, None) | (_, Some(_)) => Ok(Some(spec)),
        (_, None) => Err(
            "tls_server_config: client_auth_type verifies client certificates but no client_ca_file is given".into(),
        ),
    }
}

fn client_auth(s: &str) -> Result<ClientAuth, String> {
    match s {
        "" | "NoClientCert" => Ok(ClientAuth::NoClientCert),
        "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyClientCertIfGiven),
        "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerifyClientCert),
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => Err(format!(
            "tls_server_config: client_auth_type {s} (unverified client certificates) is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )),
        _ => Err(format!(
            "tls_server_config: invalid client_auth_type {s:?} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
        )),
    }
}

/// 12 or 13 from the toolkit's version names.
fn version(s: &str, key: &str) -> Result<u8, String> {
    match s {
        "" | "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config: {key} {s} is not supported (TLS12 and TLS13 only)"
        )),
        _ => Err(format!(
            "tls_server_config: unknown {key} {s:?} (TLS12, TLS13)"
        )),
    }
}

/// `basic_auth_users`: every value must be a bcrypt hash.
fn parse_users(y: &Yaml) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    let h = match y {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(users),
        _ => return Err("basic_auth_users must be a mapping of user: bcrypt hash".into()),
    };
    for (k, v) in h {
        let user = match k {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            _ => return Err("basic_auth_users: user names must be strings".into()),
        };
        if user.contains(':') {
            return Err(format!("basic_auth_users: user {user:?} contains ':'"));
        }
        let hash = string(v, &format!("basic_auth_users.{user}"))?;
        bcrypt::HashParts::from_str(&hash).map_err(|e| {
            format!("basic_auth_users: {user}'s password is not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 {user}`")
        })?;
        users.insert(user, hash);
    }
    Ok(users)
}

/// The headers the toolkit lets a file set, and the values it allows for
/// those with a fixed set.
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// `http_server_config`: `headers` are taken; `http2` is accepted (this
/// exporter speaks HTTP/1.1, which Prometheus scrapes as well).
fn parse_http(y: &Yaml) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for (k, v) in mapping(y, "http_server_config", &["headers", "http2"])? {
        if k == "http2" {
            boolean(v, "http_server_config.http2")?;
            continue;
        }
        for (name, value) in mapping(v, "http_server_config.headers", &HEADERS.map(|h| h.0))? {
            let value = string(value, name)?;
            let allowed = HEADERS
                .iter()
                .find(|h| h.0 == name)
                .map_or(&[][..], |h| h.1);
            if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
                return Err(format!(
                    "http_server_config.headers: {name} must be one of {allowed:?}"
                ));
            }
            let v = HeaderValue::from_str(&value).map_err(|_| {
                format!("http_server_config.headers: {name}: invalid value {value:?}")
            })?;
            let name = HeaderName::from_bytes(name.as_bytes()).expect("HEADERS are valid names");
            out.push((name, v));
        }
    }
    Ok(out)
}

/// rustls' server configuration for `spec`: certificate chain, key, client
/// verification, versions.
pub fn server_config(spec: &TlsSpec) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if spec.tls13_only {
        &[&rustls::version::TLS13]
    } else if spec.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let cert = spec.cert.as_ref().context("no certificate")?.read()?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the certificate is not PEM: {e}"))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the certificate file holds no certificate"
    );
    let key = spec.key.as_ref().context("no key")?.read()?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| anyhow::anyhow!("the key is not a PEM private key: {e}"))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca.read()?) {
                let c = c.map_err(|e| anyhow::anyhow!("client CA is not PEM: {e}"))?;
                roots.add(c).context("client CA certificate")?;
            }
            anyhow::ensure!(!roots.is_empty(), "the client CA file holds no certificate");
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match spec.client_auth {
                ClientAuth::VerifyClientCertIfGiven => v.allow_unauthenticated(),
                _ => v,
            };
            builder.with_client_cert_verifier(v.build().context("client verifier")?)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the key does not match the certificate")?;
    config.ignore_client_order = spec.prefer_server_order;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Basic-auth checks: bcrypt is slow by design (tens of ms at cost 10), so
/// it runs on the blocking pool, at most `VERIFY_AT_ONCE` at a time (a
/// flood of wrong passwords costs two cores' worth at most, and the
/// scrape's own blocking work still gets threads), and credentials that
/// passed are remembered (a bounded set) so a scrape every few seconds
/// pays once.
pub struct Auth {
    users: BTreeMap<String, String>,
    passed: Mutex<std::collections::HashSet<(String, String)>>,
    verifying: tokio::sync::Semaphore,
}

/// bcrypt verifications running at once.
const VERIFY_AT_ONCE: usize = 2;

/// Credentials remembered at most; the set starts over when full.
const PASSED_MAX: usize = 64;

impl Auth {
    pub fn new(users: BTreeMap<String, String>) -> Arc<Self> {
        Arc::new(Auth {
            users,
            passed: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(VERIFY_AT_ONCE),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether an `Authorization` header value lets the request in.
    pub async fn allows(self: &Arc<Self>, authorization: Option<&[u8]>) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some((user, pass)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let key = (user, pass);
        if self.lock().contains(&key) {
            return true;
        }
        let Ok(_turn) = self.verifying.acquire().await else {
            return false;
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let ok = this.verify(&key.0, &key.1);
            if ok {
                let mut passed = this.lock();
                if passed.len() >= PASSED_MAX {
                    passed.clear();
                }
                passed.insert(key);
            }
            ok
        })
        .await
        .unwrap_or(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.passed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// bcrypt against the user's hash; an unknown user is checked against
    /// another user's hash anyway, so the answer takes as long.
    fn verify(&self, user: &str, pass: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h, true),
            None => (self.users.values().next().expect("enabled"), false),
        };
        let ok = bcrypt::verify(pass, hash).unwrap_or(false);
        known && ok
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let v = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a server certificate for 127.0.0.1 and a client certificate,
    /// all PEM: (ca, server cert, server key, client cert, client key).
    pub fn test_pki() -> [String; 5] {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let p = CertificateParams::new(vec![name.to_string()]).unwrap();
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (srv, srv_key) = leaf("127.0.0.1");
        let (cli, cli_key) = leaf("scraper");
        [ca_pem, srv, srv_key, cli, cli_key]
    }

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("webconfig-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HASH: &str = "$2y$04$P1Q0/AaSW0w7nsgqgSxUu.T.kU7G0uTtDsyDz2P5FmQcdsAbCnY1m";

    #[test]
    fn a_full_file_as_node_exporter_takes_it() {
        let text = format!(
            "tls_server_config:\n  cert_file: srv.crt\n  key_file: /etc/x/srv.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n  prefer_server_cipher_suites: false\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  prometheus: '{HASH}'\n  '42': '{HASH}'\n"
        );
        let p = parse(&text, Path::new("/etc/tracer")).unwrap();
        let tls = p.tls.unwrap();
        assert_eq!(tls.cert, Some(Source::File("/etc/tracer/srv.crt".into())));
        assert_eq!(tls.key, Some(Source::File("/etc/x/srv.key".into())));
        assert_eq!(
            tls.client_ca,
            Some(Source::File("/etc/tracer/ca.crt".into()))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert!(tls.tls13_only && !tls.tls12_only && !tls.prefer_server_order);
        assert_eq!(p.users.keys().collect::<Vec<_>>(), ["42", "prometheus"]);
        let h: Vec<_> = p
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            h,
            [
                "x-frame-options: deny",
                "strict-transport-security: max-age=31536000"
            ]
        );
    }

    /// The README's example file is one this parser takes, and its hash is
    /// the password it names.
    #[test]
    fn the_readmes_example_file_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("# /etc/tcp-tracer/web.yml\n").expect("example");
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let p = parse(text, Path::new("/etc/tcp-tracer")).unwrap();
        let tls = p.tls.unwrap();
        assert_eq!(
            tls.cert,
            Some(Source::File("/etc/tcp-tracer/server.crt".into()))
        );
        assert_eq!(
            (tls.client_auth, tls.tls13_only),
            (ClientAuth::NoClientCert, false)
        );
        assert!(bcrypt::verify("example", &p.users["prometheus"]).unwrap());
        assert_eq!(p.headers.len(), 2);
    }

    #[test]
    fn empty_files_and_sections_mean_plain_http_without_auth() {
        for text in [
            "",
            "---\n",
            "tls_server_config:\n",
            "tls_server_config: {}\nbasic_auth_users: {}\n",
        ] {
            let p = parse(text, Path::new(".")).unwrap();
            assert_eq!(p, Parsed::default(), "{text:?}");
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_it() {
        let tls = |rest: &str| format!("tls_server_config:\n  cert_file: a\n  key_file: b\n{rest}");
        for (text, want) in [
            (
                "tls_config:\n  cert_file: a\n".to_string(),
                "unknown key \"tls_config\"",
            ),
            (
                "tls_server_config:\n  cert_file: a\n".into(),
                "missing one of key or key_file",
            ),
            (
                "tls_server_config:\n  key_file: a\n".into(),
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  min_version: TLS13\n".into(),
                "missing one of cert",
            ),
            (
                tls("  cert: inline\n"),
                "cert given with its inline/file twin",
            ),
            (tls("  certfile: a\n"), "unknown key \"certfile\""),
            (
                tls("  client_auth_type: Bogus\n"),
                "invalid client_auth_type",
            ),
            (
                tls("  client_auth_type: RequireAnyClientCert\n  client_ca_file: c\n"),
                "not supported",
            ),
            (
                tls("  client_ca_file: c\n"),
                "client_auth_type is NoClientCert",
            ),
            (
                tls("  client_auth_type: RequireAndVerifyClientCert\n"),
                "no client_ca_file",
            ),
            (tls("  min_version: TLS11\n"), "TLS12 and TLS13 only"),
            (tls("  min_version: TLS14\n"), "unknown min_version"),
            (
                tls("  min_version: TLS13\n  max_version: TLS12\n"),
                "above max_version",
            ),
            (
                tls("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
                "cipher_suites is not supported",
            ),
            (
                tls("  prefer_server_cipher_suites: maybe\n"),
                "must be true or false",
            ),
            (
                "basic_auth_users:\n  u: plain\n".into(),
                "u's password is not a bcrypt hash",
            ),
            (
                format!("basic_auth_users:\n  'a:b': '{HASH}'\n"),
                "contains ':'",
            ),
            ("basic_auth_users: [u]\n".into(), "must be a mapping"),
            (
                "http_server_config:\n  headers:\n    Server: x\n".into(),
                "unknown key \"Server\"",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(),
                "must be one of",
            ),
            (
                "http_server_config:\n  timeout: 1\n".into(),
                "unknown key \"timeout\"",
            ),
            ("- a\n".into(), "the file must be a mapping"),
            ("a: [\n".into(), "not YAML"),
        ] {
            let err = parse(&text, Path::new(".")).expect_err(&text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    /// Certificates from files relative to the file's directory; a key that
    /// is not the certificate's, or a missing file, fails at load.
    #[test]
    fn load_reads_the_pem_files_and_checks_they_match() {
        let dir = Dir::new("load");
        let [ca, srv, srv_key, _, cli_key] = test_pki();
        for (name, pem) in [
            ("ca.crt", &ca),
            ("srv.crt", &srv),
            ("srv.key", &srv_key),
            ("other.key", &cli_key),
        ] {
            std::fs::write(dir.0.join(name), pem).unwrap();
        }
        let write = |text: &str| {
            let p = dir.0.join("web.yml");
            std::fs::write(&p, text).unwrap();
            p
        };
        let ok = write("tls_server_config:\n  cert_file: srv.crt\n  key_file: srv.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n");
        let c = load(&ok).unwrap();
        assert!(c.tls.is_some() && c.users.is_empty());
        for (text, want) in [
            (
                "tls_server_config:\n  cert_file: srv.crt\n  key_file: other.key\n",
                "does not match",
            ),
            (
                "tls_server_config:\n  cert_file: nope.crt\n  key_file: srv.key\n",
                "nope.crt",
            ),
            (
                "tls_server_config:\n  cert_file: srv.key\n  key_file: srv.key\n",
                "holds no certificate",
            ),
            (
                "tls_server_config:\n  cert_file: srv.crt\n  key_file: srv.crt\n",
                "not a PEM private key",
            ),
        ] {
            let err = format!("{:#}", load(&write(text)).err().expect(text));
            assert!(
                err.contains(want) && err.contains("web.yml"),
                "{text}: {err}"
            );
        }
        let err = format!("{:#}", load(&dir.0.join("absent.yml")).err().unwrap());
        assert!(err.contains("absent.yml"), "{err}");
    }

    #[test]
    fn basic_credentials_are_decoded_as_rfc_7617_says() {
        // "prometheus:s3cr:et" in base64.
        let v = b"Basic cHJvbWV0aGV1czpzM2NyOmV0";
        assert_eq!(
            basic_credentials(v),
            Some(("prometheus".into(), "s3cr:et".into()))
        );
        assert_eq!(
            basic_credentials(b"basic cHJvbWV0aGV1czpzM2NyOmV0"),
            basic_credentials(v)
        );
        for bad in [
            &b"Bearer cHJvbWV0aGV1czpzM2NyOmV0"[..],
            b"Basic !!!",
            b"Basic bm9jb2xvbg==",
            b"",
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_right_password_of_a_known_user_passes() {
        use base64::Engine as _;
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Auth::new(BTreeMap::from([("prom".to_string(), hash)]));
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        for _ in 0..2 {
            // The second round is answered from the remembered set.
            assert!(auth.allows(Some(header("prom", "right").as_bytes())).await);
        }
        assert!(!auth.allows(Some(header("prom", "wrong").as_bytes())).await);
        assert!(!auth.allows(Some(header("other", "right").as_bytes())).await);
        assert!(!auth.allows(None).await);
        assert!(Auth::new(BTreeMap::new()).allows(None).await);
    }

    /// Client certificates are required and verified: a client with one
    /// signed by the CA completes the handshake, one without is refused.
    #[tokio::test(flavor = "current_thread")]
    async fn require_and_verify_refuses_a_client_without_a_certificate() {
        let [ca, srv, srv_key, cli, cli_key] = test_pki();
        let spec = TlsSpec {
            cert: Some(Source::Inline(srv)),
            key: Some(Source::Inline(srv_key)),
            client_ca: Some(Source::Inline(ca.clone())),
            client_auth: ClientAuth::RequireAndVerifyClientCert,
            ..Default::default()
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&spec).unwrap()));
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = |with_cert: bool| {
            let b = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone());
            let c = if with_cert {
                let chain = vec![CertificateDer::from_pem_slice(cli.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(cli_key.as_bytes()).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            } else {
                b.with_no_client_auth()
            };
            tokio_rustls::TlsConnector::from(Arc::new(c))
        };
        for with_cert in [true, false] {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let connector = client(with_cert);
            let (srv, cli) = tokio::join!(acceptor.accept(a), async move {
                use tokio::io::AsyncReadExt as _;
                let mut s = connector.connect(name, b).await?;
                if with_cert {
                    // Held until the server is done writing.
                    return Ok(Some(s));
                }
                // TLS 1.3: the server's verdict on the client arrives after
                // the client's handshake ends.
                let mut buf = [0u8; 1];
                s.read(&mut buf).await.map(|_| None)
            });
            assert_eq!(srv.is_ok(), with_cert, "server side: {:?}", srv.err());
            if !with_cert {
                assert!(cli.is_err(), "the client was not told: {cli:?}");
            }
        }
    }
}
